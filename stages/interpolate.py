"""Stage interpolate: how far to move from the base model towards the fine-tuned one, chosen on dev.

    python -m stages.interpolate

Weight interpolation (WiSE-FT, Wortsman et al., CVPR 2022): w = base + a * (finetuned - base). Each a
in interpolate.weights is scored on the dev questions (data/dev_qa.jsonl, answered greedily as the
evaluations do: does the answer state the key fact?) and on general text the base model wrote and
nobody trained on (data/rehearsal_dev.jsonl: teacher-forced NLL, the dev measure of forgetting). The a
whose dev key-fact rate is within interpolate.tolerance of the best one are tied; among them
interpolate.among_ties chooses the smallest (the facts kept, as little of the base model given up as the
dev set can tell) or the one with the lowest dev answer NLL. The held-out questions and
the retention probe are never read here: they only report.
Reads interpolate.*, evaluate.batch_size, extra_new_tokens and dtype (how the evaluations answer),
prompt.*, model.dtype and device in params.yaml, models/base and models/finetuned. Writes models/final
(what final_eval and `make ask` use), metrics/interpolation.json (the chosen a and its dev numbers) and
metrics/interpolation_curve.json (every a, for `dvc plots show`).
"""

import json
import sys

import torch

from llm_fft.evaluation import load_for_evaluation
from llm_fft.files import read_jsonl, write_atomically
from llm_fft.generation import decoding
from llm_fft.metrics import states_key_fact
from llm_fft.model import DTYPES, load_pretrained, save_model
from llm_fft.nll import answer_nll
from llm_fft.params import ParamsError, fail_if_problems, load_params, problems_in_section
from llm_fft.paths import (
    BASE_MODEL,
    DEV_QA,
    FINAL_MODEL,
    FINETUNED_MODEL,
    INTERPOLATION_CURVE,
    INTERPOLATION_METRICS,
    REHEARSAL_DEV,
)

TIE_BREAKS = ("smallest_weight", "lowest_dev_answer_nll")
SPEC = {
    "weights": (list, lambda v: v and all(isinstance(a, (int, float)) and not isinstance(a, bool) and 0 <= a <= 1
                                          for a in v) and len(set(v)) == len(v),
                "a non-empty list of distinct numbers in [0, 1] (1 = the fine-tuned weights, 0 = the base model)"),
    "tolerance": ((int, float), lambda v: 0 <= v <= 1, "a number in [0, 1] (a share of the dev questions)"),
    "among_ties": (str, lambda v: v in TIE_BREAKS, f"one of {', '.join(TIE_BREAKS)}"),
}


def score(model, tokenizer, dev, general, protocol, device):
    """The dev numbers of one set of weights."""
    answers = protocol.answer(model, tokenizer, dev, device)
    _, dev_total, dev_count = answer_nll(model, dev, protocol.batch_size, tokenizer.pad_token_id, device)
    stated = [states_key_fact(a["text"], r) for a, r in zip(answers, dev)]
    numbers = {"dev_states_key_fact": round(sum(stated) / len(dev), 4),
               "dev_answer_nll": round(dev_total / dev_count, 4)}
    if general:
        _, total, count = answer_nll(model, general, protocol.batch_size, tokenizer.pad_token_id, device)
        numbers["general_dev_text_nll"] = round(total / count, 4)
    return numbers


def choose(curve, tolerance, among_ties):
    """(the chosen weight, every weight tied with it): the weights whose dev key-fact rate is within
    tolerance of the best are tied, since a dev set tells them apart no better; among them the smallest
    (the least given up of the base model) or the one with the lowest dev answer NLL (the one that
    learned the dev answers best, where a small dev set ties often and the smallest would trade facts away)."""
    best = max(point["dev_states_key_fact"] for point in curve)
    tied = [point for point in curve if point["dev_states_key_fact"] >= best - tolerance]
    if among_ties == "smallest_weight":
        chosen = min(point["weight"] for point in tied)
    else:
        chosen = min(tied, key=lambda point: (point["dev_answer_nll"], point["weight"]))["weight"]
    return chosen, sorted((point["weight"] for point in tied), reverse=True)


def main():
    params = load_params()
    problems = problems_in_section(params, "interpolate", SPEC)
    if params.get("model", {}).get("dtype") not in DTYPES:
        problems.append(f"params.yaml: model.dtype must be one of {', '.join(DTYPES)}")
    fail_if_problems(problems)
    cfg = params["interpolate"]
    dev = read_jsonl(DEV_QA)
    weights = sorted(cfg["weights"], reverse=True)
    if len(weights) > 1 and not dev:
        sys.exit(f"error: interpolate.weights lists {len(weights)} weights, but {DEV_QA} has no dev questions to choose "
                 "among them: add dev phrasings to the facts file (file backend: pairs to generate_dataset.dev_file), "
                 "or set interpolate.weights: [1.0]")

    # Checks evaluate's decoding keys, prompt.* and device: a change to the gate's keys does not rerun this stage.
    model, tokenizer, device = load_for_evaluation(params, FINETUNED_MODEL, decoding_only=True)
    # Both ends in fp32 on the CPU, whatever the evaluation dtype: the mix is computed exactly once per a.
    tuned, base = (load_pretrained(path, torch.float32, "cpu")[0].state_dict() for path in (FINETUNED_MODEL, BASE_MODEL))
    general = read_jsonl(REHEARSAL_DEV) if REHEARSAL_DEV.exists() else []
    protocol = decoding(tokenizer, params["prompt"], params["evaluate"])  # the evaluations' own

    def interpolate(a):  # load_state_dict copies into the model's own dtype and device
        model.load_state_dict(tuned if a == 1 else {k: base[k] + a * (tuned[k] - base[k]) for k in tuned})

    curve, reference = [], {}
    if general:  # where general text starts: the base model's own NLL on it (teacher-forced, no generation)
        interpolate(0)
        _, total, count = answer_nll(model, general, params["evaluate"]["batch_size"], tokenizer.pad_token_id, device)
        reference["general_dev_text_nll_base"] = round(total / count, 4)
    if len(weights) > 1:
        for a in weights:
            interpolate(a)
            curve.append({"weight": a, **score(model, tokenizer, dev, general, protocol, device)})
            print("weight {weight:.2f} | dev states key fact {dev_states_key_fact:.3f} | dev answer nll "
                  "{dev_answer_nll:.4f}".format(**curve[-1])
                  + (f" | general dev text nll {curve[-1]['general_dev_text_nll']:.4f}" if general else ""))
        chosen, tied = choose(curve, cfg["tolerance"], cfg["among_ties"])
    else:
        chosen, tied = weights[0], []
    model = model.float().cpu()  # saved from the fp32 mix, not from a bf16 evaluation copy
    interpolate(chosen)
    save_model(model, tokenizer, FINAL_MODEL, DTYPES[params["model"]["dtype"]])
    summary = {"chosen_weight": chosen,
               "chosen_on": (f"{len(dev)} dev questions ({DEV_QA}): among the weights whose states_key_fact is within "
                             f"{cfg['tolerance']} of the best ({', '.join(map(str, tied))}), the "
                             + ("smallest" if cfg["among_ties"] == "smallest_weight" else "lowest dev answer NLL")
                             if len(weights) > 1 else "only one weight given"),
               "chosen_on_questions": len(dev) if len(weights) > 1 else 0,
               **next((p for p in curve if p["weight"] == chosen), {}), **reference}
    summary.pop("weight", None)
    write_atomically(INTERPOLATION_METRICS, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    write_atomically(INTERPOLATION_CURVE, json.dumps(curve, indent=2) + "\n")
    print(f"wrote {FINAL_MODEL} with weight {chosen} (w = base + {chosen} x (finetuned - base)), "
          f"{INTERPOLATION_METRICS} and {INTERPOLATION_CURVE}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    try:
        main()
    except ParamsError as e:  # the library raises; the stage says why in one message and exits non-zero
        sys.exit(f"error: {e}")
