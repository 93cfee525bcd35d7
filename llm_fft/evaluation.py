"""Batched greedy answering, teacher-forced answer loss, metrics and the tables people read.

baseline_eval and final_eval both call evaluate_stage(): same prompt ids, same decoding, same metrics.
"""

import json
import math

import pandas as pd
import torch
import torch.nn.functional as F

from llm_fft.data import IGNORE_INDEX, collate, read_jsonl
from llm_fft.files import write_atomically
from llm_fft.model import load_pretrained
from llm_fft.params import (fail_if_problems, pick_device, problems_in_section, seed_everything,
                            shared_problems)


def normalize(text):
    """Whitespace-insensitive form used by exact match and 'contains'."""
    return " ".join(text.split())


@torch.inference_mode()
def answer_questions(model, tokenizer, records, batch_size, max_new_tokens, device):
    """Greedy answers to every record's prompt (its q_ids), in the records' order.

    Prompts are sorted by length so each batch pads little, left-padded so every prompt ends where
    generation starts, and given an explicit attention mask: pad == EOS, so it cannot be inferred.
    Returns one dict per record: text, generated_tokens, ended_with_eos.
    """
    eos_id = tokenizer.eos_token_id
    order = sorted(range(len(records)), key=lambda i: len(records[i]["q_ids"]))
    answers = [None] * len(records)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = tokenizer.pad({"input_ids": [records[i]["q_ids"] for i in rows]},
                              padding_side="left", return_tensors="pt").to(device)
        output = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id, eos_token_id=eos_id)
        # Slice by input length, not by decoded strings: the prompt is exactly the padded width.
        for i, new_ids in zip(rows, output[:, batch["input_ids"].shape[1]:].tolist()):
            ended = eos_id in new_ids
            new_ids = new_ids[:new_ids.index(eos_id)] if ended else new_ids
            answers[i] = {"text": tokenizer.decode(new_ids, skip_special_tokens=True).strip(),
                          "generated_tokens": len(new_ids), "ended_with_eos": ended}
    return answers


@torch.inference_mode()
def answer_nll(model, records, batch_size, pad_id, device):
    """Teacher-forced negative log-likelihood of each answer (its tokens and EOS), in nats/token.

    Returns (per-record mean NLL, total NLL, number of answer tokens) so the dataset mean can be
    the global token mean, not a mean of per-record means.
    """
    per_record, total, count = [], 0.0, 0
    for start in range(0, len(records), batch_size):
        batch = {k: v.to(device) for k, v in collate(records[start:start + batch_size], pad_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        # Position t predicts token t+1.
        labels = batch["labels"][:, 1:]
        nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels,
                              ignore_index=IGNORE_INDEX, reduction="none")
        supervised = labels != IGNORE_INDEX
        for row_nll, row_mask in zip(nll, supervised):
            per_record.append(row_nll[row_mask].mean().item())
        total += nll[supervised].sum().item()
        count += int(supervised.sum())
    return per_record, total, count


def generation_limit(records, extra_new_tokens):
    """Max new tokens: the longest answer (with its EOS) plus a margin. Derived from the data, since
    a fixed small limit would cut long Korean answers short (~2 tokens per syllable here)."""
    return max(len(r["input_ids"]) - len(r["q_ids"]) for r in records) + extra_new_tokens


def evaluate(model, tokenizer, records, batch_size, extra_new_tokens, device):
    """Answer every question and score it. Returns (metrics dict, per-question DataFrame)."""
    model.eval()
    max_new_tokens = generation_limit(records, extra_new_tokens)
    answers = answer_questions(model, tokenizer, records, batch_size, max_new_tokens, device)
    per_record_nll, total_nll, n_tokens = answer_nll(model, records, batch_size,
                                                     tokenizer.pad_token_id, device)
    table = pd.DataFrame({
        "id": [r["id"] for r in records],
        "question": [r["question"] for r in records],
        "expected": [r["answer"] for r in records],
        "generated": [a["text"] for a in answers],
        "exact_match": [normalize(a["text"]) == normalize(r["answer"]) for a, r in zip(answers, records)],
        "contains_answer": [normalize(r["answer"]) in normalize(a["text"]) for a, r in zip(answers, records)],
        "ended_with_eos": [a["ended_with_eos"] for a in answers],
        "generated_tokens": [a["generated_tokens"] for a in answers],
        "answer_nll": per_record_nll,
    })
    mean_nll = total_nll / n_tokens
    metrics = {
        "questions": len(records),
        "exact_match": round(table["exact_match"].mean(), 4),
        "contains_answer": round(table["contains_answer"].mean(), 4),
        "answer_nll": round(mean_nll, 4),
        "answer_perplexity": round(math.exp(mean_nll), 4),
        "ended_with_eos": round(table["ended_with_eos"].mean(), 4),
        "mean_generated_tokens": round(table["generated_tokens"].mean(), 2),
        "max_new_tokens": max_new_tokens,
    }
    return metrics, table


def write_results(metrics, table, metrics_path, table_path):
    write_atomically(table_path, table.round({"answer_nll": 4}).to_csv(index=False))
    write_atomically(metrics_path, json.dumps(metrics, indent=2) + "\n")


def comparison_markdown(before, after, before_table, after_table):
    """The before/after page: summary numbers, then every question with both answers."""
    lines = ["# Before vs after fine-tuning", "",
             "| metric | before | after | change |", "|---|---|---|---|"]
    for key in before:
        if isinstance(before[key], float):
            lines.append(f"| {key} | {before[key]:.4f} | {after[key]:.4f} | {after[key] - before[key]:+.4f} |")
    lines += ["", "✅ exact match, ☑️ contains the expected answer, ❌ neither.", "",
              "| # | question | expected | before | after |", "|---|---|---|---|---|"]

    def cell(row):
        mark = "✅" if row.exact_match else "☑️" if row.contains_answer else "❌"
        return f"{mark} {row.generated}".replace("|", "\\|").replace("\n", " ")

    for b, a in zip(before_table.itertuples(), after_table.itertuples()):
        question, expected = (t.replace("|", "\\|") for t in (b.question, b.expected))
        lines.append(f"| {b.id} | {question} | {expected} | {cell(b)} | {cell(a)} |")
    return "\n".join(lines) + "\n"


# The evaluate section of params.yaml, read by baseline_eval and final_eval alike.
EVAL_SPEC = {
    "batch_size": (int, lambda v: v >= 1, "an integer >= 1 (questions per generate call)"),
    "extra_new_tokens": (int, lambda v: v >= 0, "an integer >= 0 (tokens)"),
    "dtype": (str, lambda v: v in ("auto", "float32", "bfloat16"), "one of auto, float32, bfloat16"),
}


def eval_dtype(name, device):
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def load_for_evaluation(params, model_dir):
    """Check the evaluate params, seed, then load the model as every evaluation (and ask) does.

    Returns (model, tokenizer, device); raises ModelNotFound if model_dir holds no model.
    """
    fail_if_problems(shared_problems(params) + problems_in_section(params, "evaluate", EVAL_SPEC))
    seed_everything(params["seed"])
    device = pick_device(params["device"])
    model, tokenizer = load_pretrained(model_dir, eval_dtype(params["evaluate"]["dtype"], device), device)
    return model.eval(), tokenizer, device


def evaluate_stage(params, model_dir, records_path):
    """The whole evaluation stage, shared by baseline_eval and final_eval so they cannot drift."""
    model, tokenizer, device = load_for_evaluation(params, model_dir)
    cfg = params["evaluate"]
    records = read_jsonl(records_path)
    return evaluate(model, tokenizer, records, cfg["batch_size"], cfg["extra_new_tokens"], device)
