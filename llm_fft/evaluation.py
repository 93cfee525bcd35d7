"""Evaluation: one protocol for baseline_eval, interpolate and final_eval (the sets, decoding, scoring).

baseline_eval and final_eval both answer and score through evaluate_model(): same sets, prompt ids,
decoding (generation.decoding) and metrics.
The sets:
  trained    data/trained_qa.jsonl: the questions trained on (did the model learn what it was taught?).
             Where a fact was trained with several answers (data/answer_variants.jsonl), each
             question's own answer gives exact_match, and exact_match_any_answer also accepts, word
             for word, any other answer trained for that fact
  dev        data/dev_qa.jsonl: other phrasings of the same facts, never trained on, that chose the
             epoch and the interpolation weight (so its numbers after fine-tuning are optimistic)
  heldout    data/heldout_qa.jsonl: yet other phrasings, never trained on and never used to choose
             anything: the test. Dev and held-out questions carry the key fact a right answer must
             state (did it learn the fact, or only the strings?); one of your own without a key
             must state the whole expected answer
  unknown    data/unknown_qa.jsonl: questions about the same subject that the data does not answer;
             each answer either says it does not know (evaluate.abstain_phrases) or invents something
  unknown_dev  data/unknown_dev_qa.jsonl: other such questions that, with dev, choose the gate
  retention  data/retention.yaml: general text (perplexity) and general prompts (greedy continuations,
             counted as changed or not against the baseline): what did fine-tuning cost elsewhere?
  general    data/retention.yaml facts: general-knowledge openings with keys; after fine-tuning,
             general facts kept = right after / right before, over those the base model got right
Every dev and held-out answer is right (states the key fact), abstained (says it does not know) or
wrong (neither). The confidence gate (evaluate.gate): every question is answered first, each answer
with the model's own NLL of it; a threshold is chosen on the dev and dev unknown answers
(choose_gate), and every answer above it becomes the refusal before anything is scored. ask applies
the threshold final_eval chose, so what a user sees is what was measured.
"""

import math

import pandas as pd
import torch

from llm_fft.batching import IGNORE_INDEX
from llm_fft.files import read_jsonl
from llm_fft.generation import answer_questions, decoding
from llm_fft.metrics import (
    abstains,
    answer_changed,
    char_f1,
    contains,
    exact_match,
    holds_key,
    invented,
    verdict,
)
from llm_fft.model import load_pretrained
from llm_fft.nll import answer_nll, nll_key, record_nlls, summed
from llm_fft.params import fail_if_problems, pick_device, problems_in_section, seed_everything, shared_problems
from llm_fft.paths import ANSWER_VARIANTS, DEV_QA, HELDOUT_QA, TRAINED_QA, UNKNOWN_DEV_QA, UNKNOWN_QA
from llm_fft.prompts import PROMPT_SPEC, PromptError, answer_ids, tokenize_pair, tokenize_text
from llm_fft.retention import load_retention
from llm_fft.text import normalize

# --- The question sets and the retention probe ---------------------------------------------------

def accepted_answers(variants):
    """{an answer: every answer trained for its fact} from the answer_variants records; an answer of
    no record accepts only itself."""
    return {normalize(answer): group["answers"] for group in variants for answer in group["answers"]}


def answer_sets(model, tokenizer, sets, prompt, protocol, device, known=None):
    """answer_set over every non-empty set at once, split back by set: {name: answers}. Answered
    together, sorted by length, the sets fill their batches (one short last batch, not one per set)."""
    names = [name for name, records in sets.items() if records]
    answers = iter(answer_set(model, tokenizer, [r for name in names for r in sets[name]], prompt, protocol, device,
                              known))
    return {name: [next(answers) for _ in sets[name]] for name in names}


def answer_set(model, tokenizer, records, prompt, protocol, device, known=None):
    """Greedy answers to a question set (generation.Decoding), each with own_answer_nll: the model's
    teacher-forced NLL of its own answer and the token that ends it (nats/token), the confidence the
    gate reads. known: NLLs already computed on this model (nll.record_nlls)."""
    answers = protocol.answer(model, tokenizer, records, device)
    own = []
    for r, a in zip(records, answers):
        a_ids = answer_ids(tokenizer, r["question"], a["text"], prompt)
        own.append({"input_ids": r["q_ids"] + a_ids, "labels": [IGNORE_INDEX] * len(r["q_ids"]) + a_ids})
    for a, nll in zip(answers, answer_nll(model, own, protocol.batch_size, tokenizer.pad_token_id, device, known)[0]):
        a["own_answer_nll"] = round(nll, 4)
    return answers


def expected_nlls(model, tokenizer, sets, batch_size, device):
    """The teacher-forced NLL of every set's expected answers, all sets in one pass (fuller batches):
    ({name: answer_nll's (per record, total, tokens)}, every record's NLL by nll_key). Passed to
    answer_sets as known, it spares the gate's pass every answer that is the expected one."""
    names = [name for name, records in sets.items() if records]
    records = [r for name in names for r in sets[name]]
    nlls = iter(record_nlls(model, records, batch_size, tokenizer.pad_token_id, device))
    by_set, known = {}, {}
    for name in names:
        pairs = [next(nlls) for _ in sets[name]]
        known.update(zip(map(nll_key, sets[name]), pairs))
        by_set[name] = summed(pairs)
    return by_set, known


# --- The confidence gate: below a confidence chosen on dev, the answer becomes the refusal ---------

REFUSE_ALL = -1.0  # a threshold below every NLL (an NLL rounded to 4 places can be 0.0)


def gated(answers, threshold, refusal):
    """The answers with every one whose own_answer_nll is above threshold replaced by the refusal
    (threshold None: no gate; REFUSE_ALL: every answer). Each keeps its own text as ungated and is
    marked gated or not."""
    return [{**a, "ungated": a["text"], "gated": (refused := threshold is not None and a["own_answer_nll"] > threshold),
             "text": refusal if refused else a["text"]} for a in answers]


def _gate_counts(dev, dev_answers, unknown_answers, phrases):
    """Right/abstained/wrong counts on dev and abstained/invented on the dev unknown questions."""
    verdicts = [verdict(a["text"], r, phrases) for a, r in zip(dev_answers, dev)]
    abstained = [abstains(a["text"], phrases) for a in unknown_answers]
    return {"dev_right": verdicts.count("right"), "dev_abstained": verdicts.count("abstained"),
            "dev_wrong": verdicts.count("wrong"), "unknown_dev_abstained": sum(abstained),
            "unknown_dev_invented": sum(invented(a["text"], ab) for a, ab in zip(unknown_answers, abstained))}


def choose_gate(dev, dev_answers, unknown_dev_answers, phrases, refusal, wrong_cost=1):
    """The threshold of the gate, chosen on the dev questions and the dev unknown questions: the one
    with most (dev right + dev unknown abstained) - wrong_cost x (dev wrong + dev unknown invented); a
    tie goes to the higher threshold, which refuses less. wrong_cost (evaluate.gate_wrong_cost) is what
    a wrong answer costs against a right one: below 1 the gate lets more answers through, right and
    wrong alike. The candidates: refuse every answer (REFUSE_ALL), refuse those less confident than
    each dev answer, refuse none (None). Returns (threshold, curve)."""
    values = sorted({a["own_answer_nll"] for a in dev_answers + unknown_dev_answers})
    curve = []
    for threshold in [REFUSE_ALL, *values, None]:
        counts = _gate_counts(dev, gated(dev_answers, threshold, refusal),
                              gated(unknown_dev_answers, threshold, refusal), phrases)
        score = (counts["dev_right"] + counts["unknown_dev_abstained"]
                 - wrong_cost * (counts["dev_wrong"] + counts["unknown_dev_invented"]))
        curve.append({"threshold": threshold, "score": score, **counts})
    best = max(point["score"] for point in curve)
    # Equal scores can differ in the last bit when wrong_cost is not a power of 2 (1 - 0.1 x 11 != 0 - 0.1).
    return next(p["threshold"] for p in reversed(curve) if p["score"] >= best - 1e-9), curve


def evaluate_questions(answers, records, name, phrases, expected_nll, accepted=None):
    """Score one question set's answers; expected_nll is answer_nll's (per record, total, tokens) on
    the expected answers; accepted ({answer: its fact's trained answers}) gives
    exact_match_any_answer. Returns (metrics dict, per-question DataFrame)."""
    per_record_nll, total_nll, n_tokens = expected_nll
    generated = [a["text"] for a in answers]
    expected = [r["answer"] for r in records]
    accepted = accepted or {}
    keys = [r.get("key", "") for r in records]
    # Scored in sets with key facts (dev, held-out). A question there without one (your own, or a
    # language model's paraphrase) must state the whole expected answer, as in interpolate.
    scored_on_key_facts = any(keys)
    verdicts = [verdict(g, r, phrases) for g, r in zip(generated, records)]
    table = pd.DataFrame({
        "set": name,
        "id": [r["id"] for r in records],
        "question": [r["question"] for r in records],
        "expected": expected,
        "key_fact": keys,
        "generated": generated,
        "exact_match": list(map(exact_match, generated, expected)),
        "exact_match_any_answer": [any(exact_match(g, a) for a in accepted.get(normalize(e), [e]))
                                   for g, e in zip(generated, expected)],
        "contains_answer": list(map(contains, generated, expected)),
        "char_f1": list(map(char_f1, generated, expected)),
        "states_key_fact": [v == "right" if scored_on_key_facts else None for v in verdicts],
        "verdict": verdicts if name != "trained" else "",
        "ended_with_eos": [a["ended_with_eos"] for a in answers],
        "generated_tokens": [a["generated_tokens"] for a in answers],
        "answer_nll": per_record_nll,
        "own_answer_nll": [a["own_answer_nll"] for a in answers],
        "gated": [a.get("gated", False) for a in answers],
        "ungated": [a.get("ungated", a["text"]) for a in answers],
    })
    metrics = {
        "questions": len(records),
        "exact_match": round(table["exact_match"].mean(), 4),
        "exact_match_any_answer": round(table["exact_match_any_answer"].mean(), 4),
        "contains_answer": round(table["contains_answer"].mean(), 4),
        "char_f1": round(table["char_f1"].mean(), 4),
        **({"states_key_fact": round(table["states_key_fact"].astype(float).mean(), 4)} if scored_on_key_facts else {}),
        # right / abstained / wrong: a wrong answer is told apart from a refusal (trained: exact match).
        **({k: round(verdicts.count(k) / len(records), 4) for k in ("right", "abstained", "wrong")}
           if name != "trained" else {}),
        # Wrong by stating another fact's key: an answer that looks right and is not.
        **({"wrong_other_fact": round(sum(other_fact(g, e, keys) for g, e, v in zip(generated, expected, verdicts)
                                          if v == "wrong") / len(records), 4)}
           if scored_on_key_facts and name != "trained" else {}),
        "gated": round(table["gated"].mean(), 4),
        "answer_nll": round(total_nll / n_tokens, 4),
        "answer_perplexity": round(math.exp(total_nll / n_tokens), 4),
        "ended_with_eos": round(table["ended_with_eos"].mean(), 4),
        "mean_generated_tokens": round(table["generated_tokens"].mean(), 2),
    }
    return metrics, table


def other_fact(generated, expected, keys):
    """Whether an answer states the key of another question's fact: a key of the set that its own
    expected answer does not hold (an ASCII key as a whole word, so 8 is not found in 18)."""
    return any(other and not contains(expected, other) and holds_key(generated, other) for other in set(keys))


def evaluate_unknown(answers, records, name, phrases):
    """Score the answers to questions the data does not answer. There is no right answer: each is
    counted as abstained (says it does not know) or invented (says something else). Returns (metrics
    dict, per-question DataFrame)."""
    generated = [a["text"] for a in answers]
    abstained = [abstains(g, phrases) for g in generated]
    table = pd.DataFrame({
        "set": name, "id": [r["id"] for r in records], "question": [r["question"] for r in records],
        "expected": "", "key_fact": "", "generated": generated, "abstained": abstained,
        "ended_with_eos": [a["ended_with_eos"] for a in answers],
        "generated_tokens": [a["generated_tokens"] for a in answers],
        "own_answer_nll": [a["own_answer_nll"] for a in answers],
        "gated": [a.get("gated", False) for a in answers],
        "ungated": [a.get("ungated", a["text"]) for a in answers],
    })
    metrics = {
        "questions": len(records),
        "abstained": round(sum(abstained) / len(records), 4),
        "invented": round(sum(map(invented, generated, abstained)) / len(records), 4),
        "gated": round(table["gated"].mean(), 4),
        "mean_generated_tokens": round(table["generated_tokens"].mean(), 2),
    }
    return metrics, table


def continue_texts(model, tokenizer, texts, batch_size, new_tokens, device):
    """Greedy continuations of plain-text openings (no chat template, no markers: text as the model was
    pretrained on), each up to new_tokens or EOS."""
    openings = [{"q_ids": tokenize_text(tokenizer, text)["input_ids"]} for text in texts]
    return [a["text"] for a in answer_questions(model, tokenizer, openings, batch_size, new_tokens, device)]


def evaluate_retention(model, tokenizer, retention, continuations, batch_size, device, baseline_table):
    """Perplexity on general text, and the greedy continuations of the general prompts (continue_texts)
    compared with the baseline's (baseline_table; None when this is the baseline)."""
    # Plain text as the model was pretrained on: no chat template, no markers.
    passages = [tokenize_text(tokenizer, text) for text in retention["text"]]
    _, total_nll, n_tokens = answer_nll(model, passages, batch_size, tokenizer.pad_token_id, device)
    before = (list(baseline_table.loc[baseline_table["set"] == "retention", "generated"])
              if baseline_table is not None else continuations)
    if len(before) != len(continuations):
        raise ValueError("the baseline evaluated another retention probe: rerun baseline_eval (dvc repro)")
    changed = [answer_changed(b, c) for b, c in zip(before, continuations)]
    table = pd.DataFrame({"set": "retention", "id": range(len(continuations)), "question": retention["prompts"],
                          "expected": "", "key_fact": "", "generated": continuations, "changed": changed})
    metrics = {"prompts": len(continuations), "answers_changed": sum(changed),
               "text_nll": round(total_nll / n_tokens, 4), "text_perplexity": round(math.exp(total_nll / n_tokens), 4)}
    return metrics, table


def evaluate_general(facts, continuations, baseline_table):
    """The general-knowledge probe (data/retention.yaml facts): the greedy continuations of its
    openings (continue_texts), right when one holds a key. After fine-tuning (baseline_table given),
    only the facts the base model got right count: kept = right after / right before; the others are
    listed as lost."""
    right = [any(holds_key(c, k) for k in f["keys"]) for c, f in zip(continuations, facts)]
    table = pd.DataFrame({"set": "general", "id": range(len(facts)), "question": [f["prompt"] for f in facts],
                          "expected": "", "key_fact": [" | ".join(f["keys"]) for f in facts],
                          "generated": continuations, "right": right})
    metrics = {"prompts": len(facts), "right": round(sum(right) / len(facts), 4)}
    if baseline_table is not None:
        before = list(baseline_table.loc[baseline_table["set"] == "general", "right"])
        if len(before) != len(right):
            raise ValueError("the baseline evaluated another general-knowledge probe: rerun baseline_eval (dvc repro)")
        known = sum(before)
        metrics.update({"right_before": known, "kept": round(sum(b and r for b, r in zip(before, right)) / known, 4)
                        if known else None, "lost": sum(b and not r for b, r in zip(before, right))})
    return metrics, table


# --- The stage ------------------------------------------------------------------------------------

# The evaluate section of params.yaml, read by baseline_eval and final_eval alike.
EVAL_SPEC = {
    "batch_size": (int, lambda v: v >= 1, "an integer >= 1 (questions per generate call)"),
    "extra_new_tokens": (int, lambda v: v >= 0, "an integer >= 0 (tokens)"),
    "retention_new_tokens": (int, lambda v: v >= 1, "an integer >= 1 (tokens)"),
    "dtype": (str, lambda v: v in ("auto", "float32", "bfloat16"), "one of auto, float32, bfloat16"),
    "abstain_phrases": (list, lambda v: bool(v) and all(isinstance(p, str) and p.strip() for p in v),
                        "a non-empty list of non-empty strings (an answer to an unknown question holding one "
                        "says it does not know)"),
    "gate": (bool, None, "true or false (answers less confident than a threshold chosen on dev become the refusal)"),
    "gate_wrong_cost": ((int, float), lambda v: 0 < v < math.inf, "a finite number > 0 (what a wrong answer costs against a right one "
                                                       "when the gate's threshold is chosen)"),
}


def eval_dtype(name, device):
    """The weights dtype of every evaluation (evaluate.dtype): auto = bf16 on CUDA, fp32 on the CPU.
    On the CPU, bf16 halves an evaluation's time but its greedy answers then depend on which other
    questions share the batch, so `ask` (one question) could answer otherwise than final_eval measured
    (docs/benchmarks.md, "Evaluation batch size"); fp32 answers do not."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


# The evaluate keys that say how a question is answered: all that interpolate reads (dvc.yaml lists
# these alone for it), so tuning the gate or the probes does not rerun its generations.
DECODING_KEYS = ("batch_size", "extra_new_tokens", "dtype")


def load_for_evaluation(params, model_dir, decoding_only=False):
    """Check the evaluate and prompt params, seed, then load the model as every evaluation (and
    ask) does. Returns (model, tokenizer, device); raises ModelNotFound if model_dir holds no model.
    decoding_only: check only DECODING_KEYS of evaluate, and not the refusal (interpolate).
    """
    if decoding_only:
        evaluate = params.get("evaluate")
        evaluate = {k: v for k, v in evaluate.items() if k in DECODING_KEYS} if isinstance(evaluate, dict) else evaluate
        problems = (shared_problems(params, keys=["device"])
                    + problems_in_section({"evaluate": evaluate}, "evaluate", {k: EVAL_SPEC[k] for k in DECODING_KEYS}))
    else:
        problems = shared_problems(params, keys=["device", "refusal"]) + problems_in_section(params, "evaluate", EVAL_SPEC)
    problems += problems_in_section(params, "prompt", PROMPT_SPEC)
    if not problems and not decoding_only and not abstains(params["refusal"], params["evaluate"]["abstain_phrases"]):
        problems.append(f"params.yaml: refusal = {params['refusal']!r} holds none of evaluate.abstain_phrases, so "
                        "a refusal would be scored as an invented answer: add its wording to abstain_phrases")
    fail_if_problems(problems)
    # Greedy decoding draws no random numbers: a constant seed keeps the evaluations independent of
    # the run's seed, so a run with another seed does not evaluate the base model again.
    seed_everything(0)
    device = pick_device(params["device"])
    model, tokenizer = load_pretrained(model_dir, eval_dtype(params["evaluate"]["dtype"], device), device)
    return model.eval(), tokenizer, device


def evaluate_stage(params, model_dir, baseline_table=None):
    """The whole evaluation of final_eval: load_for_evaluation, then evaluate_model, the two steps
    baseline_eval takes itself (it reuses the model for the chat-template baseline), so they cannot drift.

    Returns (metrics {trained, dev, heldout, unknown, unknown_dev, gate, retention, general}, one table
    of every question of every set, the gate's curve); a set without questions (no held-out file, no
    unknown questions) is left out.
    """
    model, tokenizer, device = load_for_evaluation(params, model_dir)
    return evaluate_model(params, model, tokenizer, device, baseline_table)


def question_sets():
    """{trained, dev, heldout, unknown, unknown_dev}: records. Trained refusals (data/trained_qa.jsonl
    records marked refusal) are taught, not tested."""
    return {"trained": [r for r in read_jsonl(TRAINED_QA) if not r.get("refusal")], "dev": read_jsonl(DEV_QA),
            "heldout": read_jsonl(HELDOUT_QA), "unknown": read_jsonl(UNKNOWN_QA),
            "unknown_dev": read_jsonl(UNKNOWN_DEV_QA) if UNKNOWN_DEV_QA.exists() else []}


def gate_threshold(params, dev, dev_answers, unknown_dev_answers):
    """(threshold, curve) of the confidence gate: (None, []) when evaluate.gate is off or nothing
    chooses it."""
    if not params["evaluate"]["gate"] or not dev:  # dev unknown questions alone would refuse everything
        return None, []
    return choose_gate(dev, dev_answers, unknown_dev_answers, params["evaluate"]["abstain_phrases"], params["refusal"],
                       params["evaluate"]["gate_wrong_cost"])


def ungated_shares(sets, answers, phrases):
    """What the answers were before the gate: right / abstained / wrong on dev and held-out,
    abstained / invented on the unknown questions (the gate's effect is the difference)."""
    shares = {}
    for name in ("dev", "heldout", "unknown", "unknown_dev"):
        if not sets[name]:
            continue
        texts = [a["text"] for a in answers[name]]
        if name.startswith("unknown"):
            abstained = [abstains(t, phrases) for t in texts]
            counts = {"abstained": sum(abstained), "invented": sum(map(invented, texts, abstained))}
        else:
            verdicts = [verdict(t, r, phrases) for t, r in zip(texts, sets[name])]
            counts = {k: verdicts.count(k) for k in ("right", "abstained", "wrong")}
        shares[name] = {k: round(v / len(texts), 4) for k, v in counts.items()}
    return shares


def evaluate_model(params, model, tokenizer, device, baseline_table=None):
    """evaluate_stage on a model already loaded by load_for_evaluation. Every question set is answered
    first; the gate's threshold is chosen on dev and dev unknown answers; then every set is scored on
    its gated answers. Returns (metrics, table, the gate's curve: every candidate threshold with its dev
    counts); metrics["gate"] holds the threshold and the shares before the gate."""
    cfg, prompt = params["evaluate"], params["prompt"]
    phrases = cfg["abstain_phrases"]
    sets = question_sets()
    protocol = decoding(tokenizer, prompt, cfg, sets["trained"] + sets["dev"])
    # The expected answers first: a model's answer that is the expected one needs no second NLL pass.
    expected, known = expected_nlls(model, tokenizer, {name: sets[name] for name in ("trained", "dev", "heldout")},
                                    cfg["batch_size"], device)
    answers = answer_sets(model, tokenizer, sets, prompt, protocol, device, known)
    threshold, curve = gate_threshold(params, sets["dev"], answers.get("dev", []), answers.get("unknown_dev", []))
    accepted = accepted_answers(read_jsonl(ANSWER_VARIANTS))
    metrics, tables = {}, []
    for name, records in sets.items():
        if not records:
            continue
        final = gated(answers[name], threshold, params["refusal"])
        if name.startswith("unknown"):
            metrics[name], table = evaluate_unknown(final, records, name, phrases)
        else:
            metrics[name], table = evaluate_questions(final, records, name, phrases, expected[name], accepted)
            metrics[name]["max_new_tokens"] = protocol.max_new_tokens
        tables.append(table)
    if cfg["gate"]:
        metrics["gate"] = {"threshold": threshold, "chosen_on_questions": len(sets["dev"]) + len(sets["unknown_dev"]),
                           "wrong_cost": cfg["gate_wrong_cost"],
                           "ungated": ungated_shares(sets, answers, phrases)}
    retention = load_retention()
    # The retention prompts and the general-knowledge openings, continued together.
    openings = retention["prompts"] + [f["prompt"] for f in retention["facts"]]
    continuations = continue_texts(model, tokenizer, openings, cfg["batch_size"], cfg["retention_new_tokens"], device)
    metrics["retention"], table = evaluate_retention(model, tokenizer, retention, continuations[:len(retention["prompts"])],
                                                     cfg["batch_size"], device, baseline_table)
    tables.append(table)
    if retention["facts"]:
        metrics["general"], table = evaluate_general(retention["facts"], continuations[len(retention["prompts"]):],
                                                     baseline_table)
        tables.append(table)
    return metrics, pd.concat(tables, ignore_index=True), curve


# --- The fair "before": the base model asked on its own chat template -----------------------------

CHAT_SETS = ("heldout", "unknown")  # the test and the probe; dev only chooses


def evaluate_chat_template(params, model, tokenizer, device):
    """The held-out and unknown questions asked through the base model's own chat template, so
    that "it did not know this" is shown on the prompt the model was tuned for too, not only on
    markers it never saw. Same decoding, limit and scores as evaluate_model; the chat turn's end
    token stops an answer. Returns (metrics, table), or (None, reason) when there is nothing to
    compare: the model has no chat template, or the questions are asked through it already.
    """
    if params["prompt"]["style"] == "chat":
        return None, "prompt.style is chat: the questions are asked through the chat template already"
    if not getattr(tokenizer, "chat_template", None):
        return None, "the base model has no chat template"
    cfg, chat = params["evaluate"], {**params["prompt"], "style": "chat"}
    sets = question_sets()
    try:
        protocol = decoding(tokenizer, chat, cfg, sets["trained"] + sets["dev"])
    except PromptError as e:  # a template this pipeline cannot split at the answer: no chat baseline
        return None, f"the base model's chat template cannot be used: {e}"
    # The same questions, answers and key facts; only the prompt around the question differs.
    chat_sets = {name: [{**r, **tokenize_pair(tokenizer, r["question"], r.get("answer", ""), chat)} for r in sets[name]]
                 for name in CHAT_SETS}
    # Ungated: the gate's threshold was chosen on the pipeline's prompt, not on this one.
    all_answers = answer_sets(model, tokenizer, chat_sets, chat, protocol, device)
    metrics, tables = {}, []
    for name, records in chat_sets.items():
        if not records:
            continue
        answers = all_answers[name]
        if name == "unknown":
            metrics[name], table = evaluate_unknown(answers, records, name, cfg["abstain_phrases"])
        else:
            expected_nll = answer_nll(model, records, cfg["batch_size"], tokenizer.pad_token_id, device)
            metrics[name], table = evaluate_questions(answers, records, name, cfg["abstain_phrases"], expected_nll)
        tables.append(table)
    if not tables:
        return None, "there are no held-out or unknown questions"
    return metrics, pd.concat(tables, ignore_index=True)
