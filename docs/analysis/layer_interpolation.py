"""Interpolation by layer group (Lin et al. 2024, "Mitigating the alignment tax of RLHF": averaging the
lower layers with the base model keeps most), against today's one weight for the whole model, on one
finished run (docs/learning-quality.md; issue #24 item 4).

    python docs/analysis/layer_interpolation.py            # in a workspace holding a finished run

w = base + a_group x (finetuned - base), with a_group for the lower, middle and upper third of the decoder
layers (the embedding counts as lower, the final norm as upper; a tied head follows the embedding).
Each setting is scored as stage interpolate scores a weight: dev key-fact rate (greedy, the evaluations'
decoding) and general dev text NLL (data/rehearsal_dev.jsonl: what chooses); and, for the record only,
general facts kept on the retention probe (data/retention.yaml facts, right after / right before as in
final_eval, the base model's answers read from metrics/baseline_answers.csv). Nothing is written.
"""

import re

import torch

from llm_fft.evaluation import continue_texts, evaluate_general
from llm_fft.files import read_jsonl
from llm_fft.generation import decoding
from llm_fft.metrics import read_answers, states_key_fact
from llm_fft.model import load_pretrained
from llm_fft.nll import answer_nll
from llm_fft.params import load_params
from llm_fft.retention import load_retention

# (lower, middle, upper) weights; the first four are today's candidates (one weight for all).
SETTINGS = [(1.0, 1.0, 1.0), (0.9, 0.9, 0.9), (0.8, 0.8, 0.8), (0.7, 0.7, 0.7),
            (0.5, 1.0, 1.0), (0.0, 1.0, 1.0), (0.5, 0.8, 1.0), (1.0, 1.0, 0.5), (1.0, 0.5, 1.0)]


def group_of(name, layers):
    """0, 1 or 2: the third of the model a parameter belongs to."""
    match = re.search(r"layers\.(\d+)\.", name)
    if match:
        return min(2, int(match.group(1)) * 3 // layers)
    return 0 if "embed" in name else 2


def main():
    params = load_params()
    tuned = load_pretrained("models/finetuned", torch.float32, "cpu")[0].state_dict()
    model, tokenizer = load_pretrained("models/base", torch.float32, "cpu")
    model.eval()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    layers = model.config.num_hidden_layers
    groups = {k: group_of(k, layers) for k in tuned}
    dev, general = read_jsonl("data/dev_qa.jsonl"), read_jsonl("data/rehearsal_dev.jsonl")
    protocol = decoding(tokenizer, params["prompt"], params["evaluate"])
    facts = load_retention()["facts"]
    baseline = read_answers("metrics/baseline_answers.csv")
    batch = params["evaluate"]["batch_size"]
    print("lower middle upper | dev key fact | general dev text nll | general facts kept")
    for weights in SETTINGS:
        model.load_state_dict({k: base[k] + weights[groups[k]] * (tuned[k] - base[k]) for k in tuned})
        answers = protocol.answer(model, tokenizer, dev, "cpu")
        dev_right = sum(states_key_fact(a["text"], r) for a, r in zip(answers, dev)) / len(dev)
        _, total, count = answer_nll(model, general, batch, tokenizer.pad_token_id, "cpu")
        said = continue_texts(model, tokenizer, [f["prompt"] for f in facts], batch,
                              params["evaluate"]["retention_new_tokens"], "cpu")
        probe = evaluate_general(facts, said, baseline)[0]  # final_eval's own rule: right after / right before
        print(f"{weights[0]:5.1f} {weights[1]:6.1f} {weights[2]:5.1f} | {dev_right:12.3f} | {total / count:20.4f} | "
              f"{probe['kept']:.3f} ({probe['right_before'] - probe['lost']} of {probe['right_before']})", flush=True)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
