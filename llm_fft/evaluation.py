"""Evaluation: one protocol for baseline_eval, interpolate and final_eval (the sets, decoding, scoring).

baseline_eval and final_eval both call evaluate_stage(): same sets, prompt ids, decoding and metrics.
The sets:
  trained    data/qa.jsonl: the questions trained on (did the model learn what it was taught?).
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
  retention  data/retention.yaml: general text (perplexity) and general prompts (greedy continuations,
             counted as changed or not against the baseline): what did fine-tuning cost elsewhere?
"""

import math
from pathlib import Path

import pandas as pd
import torch

from llm_fft.data import (
    PROMPT_SPEC,
    load_retention,
    read_jsonl,
    stop_ids,
    stop_texts,
    tokenize_pair,
    tokenize_text,
)
from llm_fft.generation import answer_questions, generation_limit
from llm_fft.loss import answer_nll
from llm_fft.metrics import abstains, answer_changed, char_f1, contains, exact_match, invented
from llm_fft.model import load_pretrained
from llm_fft.params import fail_if_problems, pick_device, problems_in_section, seed_everything, shared_problems
from llm_fft.text import normalize

TRAINED = Path("data/qa.jsonl")
DEV = Path("data/dev_qa.jsonl")
HELDOUT = Path("data/heldout_qa.jsonl")
UNKNOWN = Path("data/unknown_qa.jsonl")
VARIANTS = Path("data/answer_variants.jsonl")


# --- The question sets and the retention probe ---------------------------------------------------

def accepted_answers(variants):
    """{an answer: every answer trained for its fact} from the answer_variants records; an answer of
    no record accepts only itself."""
    return {normalize(answer): group["answers"] for group in variants for answer in group["answers"]}


def evaluate_questions(model, tokenizer, records, name, batch_size, max_new_tokens, stop, device, stop_texts=(),
                       accepted=None):
    """Answer and score one question set; accepted ({answer: its fact's trained answers}) gives
    exact_match_any_answer. Returns (metrics dict, per-question DataFrame)."""
    answers = answer_questions(model, tokenizer, records, batch_size, max_new_tokens, device, stop, stop_texts)
    per_record_nll, total_nll, n_tokens = answer_nll(model, records, batch_size, tokenizer.pad_token_id, device)
    generated = [a["text"] for a in answers]
    expected = [r["answer"] for r in records]
    accepted = accepted or {}
    keys = [r.get("key", "") for r in records]
    # Scored in sets with key facts (dev, held-out). A question there without one (your own, or a
    # language model's paraphrase) must state the whole expected answer, as in interpolate.
    scored_on_key_facts = any(keys)
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
        "states_key_fact": [contains(g, k or e) if scored_on_key_facts else None
                            for g, k, e in zip(generated, keys, expected)],
        "ended_with_eos": [a["ended_with_eos"] for a in answers],
        "generated_tokens": [a["generated_tokens"] for a in answers],
        "answer_nll": per_record_nll,
    })
    mean_nll = total_nll / n_tokens
    metrics = {
        "questions": len(records),
        "exact_match": round(table["exact_match"].mean(), 4),
        "exact_match_any_answer": round(table["exact_match_any_answer"].mean(), 4),
        "contains_answer": round(table["contains_answer"].mean(), 4),
        "char_f1": round(table["char_f1"].mean(), 4),
        **({"states_key_fact": round(table["states_key_fact"].astype(float).mean(), 4)} if scored_on_key_facts else {}),
        "answer_nll": round(mean_nll, 4),
        "answer_perplexity": round(math.exp(mean_nll), 4),
        "ended_with_eos": round(table["ended_with_eos"].mean(), 4),
        "mean_generated_tokens": round(table["generated_tokens"].mean(), 2),
        "max_new_tokens": max_new_tokens,
    }
    return metrics, table


def evaluate_unknown(model, tokenizer, records, batch_size, max_new_tokens, stop, device, stop_texts,
                     abstain_phrases):
    """Answer the questions the data does not answer, decoded as every other set is. There is no
    right answer: each is counted as abstained (says it does not know) or invented (says something
    else). Returns (metrics dict, per-question DataFrame)."""
    answers = answer_questions(model, tokenizer, records, batch_size, max_new_tokens, device, stop, stop_texts)
    generated = [a["text"] for a in answers]
    abstained = [abstains(g, abstain_phrases) for g in generated]
    table = pd.DataFrame({
        "set": "unknown", "id": [r["id"] for r in records], "question": [r["question"] for r in records],
        "expected": "", "key_fact": "", "generated": generated, "abstained": abstained,
        "ended_with_eos": [a["ended_with_eos"] for a in answers],
        "generated_tokens": [a["generated_tokens"] for a in answers],
    })
    metrics = {
        "questions": len(records),
        "abstained": round(sum(abstained) / len(records), 4),
        "invented": round(sum(map(invented, generated, abstained)) / len(records), 4),
        "mean_generated_tokens": round(table["generated_tokens"].mean(), 2),
    }
    return metrics, table


def evaluate_retention(model, tokenizer, retention, batch_size, new_tokens, device, baseline_table):
    """Perplexity on general text and greedy continuations of general prompts, compared with the
    baseline's continuations (baseline_table; None when this is the baseline)."""
    # Plain text as the model was pretrained on: no chat template, no markers.
    passages = [tokenize_text(tokenizer, text) for text in retention["text"]]
    _, total_nll, n_tokens = answer_nll(model, passages, batch_size, tokenizer.pad_token_id, device)
    prompts = [{"q_ids": tokenize_text(tokenizer, p)["input_ids"]} for p in retention["prompts"]]
    continuations = [a["text"] for a in answer_questions(model, tokenizer, prompts, batch_size, new_tokens, device)]
    before = (list(baseline_table.loc[baseline_table["set"] == "retention", "generated"])
              if baseline_table is not None else continuations)
    if len(before) != len(continuations):
        raise ValueError("the baseline evaluated another retention probe: rerun baseline_eval (dvc repro)")
    changed = [answer_changed(b, c) for b, c in zip(before, continuations)]
    table = pd.DataFrame({"set": "retention", "id": range(len(prompts)), "question": retention["prompts"],
                          "expected": "", "key_fact": "", "generated": continuations, "changed": changed})
    metrics = {"prompts": len(prompts), "answers_changed": sum(changed),
               "text_nll": round(total_nll / n_tokens, 4), "text_perplexity": round(math.exp(total_nll / n_tokens), 4)}
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
}


def eval_dtype(name, device):
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def load_for_evaluation(params, model_dir):
    """Check the evaluate and prompt params, seed, then load the model as every evaluation (and
    ask) does. Returns (model, tokenizer, device); raises ModelNotFound if model_dir holds no model.
    """
    fail_if_problems(shared_problems(params, keys=["device"]) + problems_in_section(params, "evaluate", EVAL_SPEC)
                     + problems_in_section(params, "prompt", PROMPT_SPEC))
    # Greedy decoding draws no random numbers: a constant seed keeps the evaluations independent of
    # the run's seed, so a run with another seed does not evaluate the base model again.
    seed_everything(0)
    device = pick_device(params["device"])
    model, tokenizer = load_pretrained(model_dir, eval_dtype(params["evaluate"]["dtype"], device), device)
    return model.eval(), tokenizer, device


def evaluate_stage(params, model_dir, baseline_table=None):
    """The whole evaluation, shared by baseline_eval and final_eval so they cannot drift.

    Returns (metrics {trained, dev, heldout, unknown, retention}, one table of every question of every
    set); a set without questions (no held-out file, no unknown questions) is left out.
    """
    model, tokenizer, device = load_for_evaluation(params, model_dir)
    return evaluate_model(params, model, tokenizer, device, baseline_table)


def question_sets(cfg):
    """({trained, dev, heldout, unknown}: records, the generation limit every set is answered with).
    One limit for all, from the questions that choose (interpolate uses the same): dev and held-out
    questions ask for the trained answers, and unknown ones get the room a real answer gets, no more."""
    sets = {"trained": read_jsonl(TRAINED), "dev": read_jsonl(DEV), "heldout": read_jsonl(HELDOUT),
            "unknown": read_jsonl(UNKNOWN)}
    return sets, generation_limit(sets["trained"] + sets["dev"], cfg["extra_new_tokens"])


def evaluate_model(params, model, tokenizer, device, baseline_table=None):
    """evaluate_stage on a model already loaded by load_for_evaluation."""
    cfg = params["evaluate"]
    sets, limit = question_sets(cfg)
    stop = stop_ids(tokenizer, params["prompt"])
    accepted = accepted_answers(read_jsonl(VARIANTS))
    metrics, tables = {}, []
    for name in ("trained", "dev", "heldout"):
        if records := sets[name]:
            metrics[name], table = evaluate_questions(model, tokenizer, records, name, cfg["batch_size"],
                                                      limit, stop, device, stop_texts(params["prompt"]), accepted)
            tables.append(table)
    if unknown := sets["unknown"]:
        metrics["unknown"], table = evaluate_unknown(model, tokenizer, unknown, cfg["batch_size"], limit, stop, device,
                                                     stop_texts(params["prompt"]), cfg["abstain_phrases"])
        tables.append(table)
    metrics["retention"], table = evaluate_retention(model, tokenizer, load_retention(), cfg["batch_size"],
                                                     cfg["retention_new_tokens"], device, baseline_table)
    tables.append(table)
    return metrics, pd.concat(tables, ignore_index=True)


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
    sets, limit = question_sets(cfg)
    stop = stop_ids(tokenizer, chat)
    metrics, tables = {}, []
    for name in CHAT_SETS:
        # The same questions, answers and key facts; only the prompt around the question differs.
        records = [{**r, **tokenize_pair(tokenizer, r["question"], r.get("answer", ""), chat)} for r in sets[name]]
        if not records:
            continue
        if name == "unknown":
            metrics[name], table = evaluate_unknown(model, tokenizer, records, cfg["batch_size"], limit, stop, device,
                                                    (), cfg["abstain_phrases"])
        else:
            metrics[name], table = evaluate_questions(model, tokenizer, records, name, cfg["batch_size"], limit,
                                                      stop, device)
        tables.append(table)
    if not tables:
        return None, "there are no held-out or unknown questions"
    return metrics, pd.concat(tables, ignore_index=True)
