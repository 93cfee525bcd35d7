"""Stage parse_qa: parse data/dataset.txt into tokenized training records, and tokenize the held-out set.

    python -m stages.parse_qa

Reads parse_qa.*, dataset.* and prompt.* in params.yaml, data/dataset.txt (any format of the README),
data/statements.jsonl, data/dev.jsonl, data/heldout.jsonl, data/unknown.jsonl, data/unknown_dev.jsonl,
data/refusals.jsonl and the tokenizer in models/base. Writes data/trained_qa.jsonl (one record per pair: question, answer, prompt, q_ids, input_ids, labels),
data/statements_qa.jsonl (each statement as plain text, every token learned), data/dev_qa.jsonl and
data/heldout_qa.jsonl (the same as trained_qa.jsonl for the dev and held-out questions, plus their key fact),
data/unknown_qa.jsonl and data/unknown_dev_qa.jsonl (the questions no fact answers: question, prompt and
q_ids only, since there is no answer to learn or score; the dev ones choose the confidence gate). The
refusal pairs of data/refusals.jsonl join data/trained_qa.jsonl last, marked "refusal": true. data/preview.md
shows decoded inputs and decoded supervised labels for a few examples. Any malformed pair or over-long example stops the stage with every
problem listed by line, and nothing is written.
"""

import sys

from llm_fft.batching import IGNORE_INDEX
from llm_fft.files import read_jsonl, to_jsonl, write_atomically
from llm_fft.formats import DATASET_SPEC, DatasetError, read_pairs
from llm_fft.model import load_tokenizer
from llm_fft.params import ParamsError, fail_if_problems, load_params, problems_in_section
from llm_fft.paths import (
    BASE_MODEL,
    DEV_QA,
    DEV_QUESTIONS,
    HELDOUT_QA,
    HELDOUT_QUESTIONS,
    PREVIEW,
    REFUSALS,
    STATEMENTS,
    STATEMENTS_QA,
    TRAINED_DATASET,
    TRAINED_QA,
    UNKNOWN_DEV_QA,
    UNKNOWN_DEV_QUESTIONS,
    UNKNOWN_QA,
    UNKNOWN_QUESTIONS,
)
from llm_fft.prompts import PROMPT_SPEC, PromptError, build_prompt, prompt_ids, tokenize_pair, tokenize_text

SPEC = {
    "max_length": (int, lambda v: v >= 8, "an integer >= 8 (tokens)"),
    "preview_examples": (int, lambda v: v >= 0, "an integer >= 0"),
}


def preview(tokenizer, records):
    """Markdown showing what the model reads and what it is trained to write, token-exact."""
    lines = ["# What the model is trained on", "",
             "`input` is the full decoded input_ids; `supervised` decodes only the tokens whose label "
             "is not -100 (the answer and the token that ends it). Special tokens are shown.", ""]
    for r in records:
        supervised = [t for t in r["labels"] if t != IGNORE_INDEX]
        lines += [f"## Example {r['id']}: {len(r['q_ids'])} prompt + {len(supervised)} supervised tokens", "",
                  "input:", "```", tokenizer.decode(r["input_ids"]), "```",
                  "supervised:", "```", tokenizer.decode(supervised), "```", ""]
    return "\n".join(lines)


def tokenize_all(tokenizer, pairs, prompt, max_length, where):
    """Records for pairs [{question, answer, ...}], and a problem for each one over max_length."""
    records, too_long = [], []
    for i, pair in enumerate(pairs):
        ids = tokenize_pair(tokenizer, pair["question"], pair["answer"], prompt)
        if len(ids["input_ids"]) > max_length:
            too_long.append(f"{where(i, pair)}: example has {len(ids['input_ids'])} tokens, more than "
                            f"parse_qa.max_length = {max_length}: {pair['question']!r}")
        extra = {"key": pair["key"]} if "key" in pair else {}
        records.append({"id": i, "question": pair["question"], "answer": pair["answer"], **extra,
                        "prompt": build_prompt(pair["question"], prompt, tokenizer), **ids})
    return records, too_long


def tokenize_questions(tokenizer, questions, prompt, max_length, where):
    """Records for questions without an answer [{question}] (the unknown-question probe): the prompt
    and its ids only, nothing to learn or to score a loss on; a problem for each over max_length."""
    records, too_long = [], []
    for i, row in enumerate(questions):
        q_ids = prompt_ids(tokenizer, row["question"], prompt)
        if len(q_ids) > max_length:
            too_long.append(f"{where(i)}: prompt has {len(q_ids)} tokens, more than parse_qa.max_length = "
                            f"{max_length}: {row['question']!r}")
        records.append({"id": i, "question": row["question"],
                        "prompt": build_prompt(row["question"], prompt, tokenizer), "q_ids": q_ids})
    return records, too_long


def main():
    params = load_params()
    fail_if_problems(problems_in_section(params, "parse_qa", SPEC) + problems_in_section(params, "dataset", DATASET_SPEC)
                     + problems_in_section(params, "prompt", PROMPT_SPEC))
    cfg, fmt, prompt = params["parse_qa"], params["dataset"], params["prompt"]
    try:
        pairs, warnings = read_pairs(TRAINED_DATASET.read_bytes(), TRAINED_DATASET, fmt["format"], fmt["separator"])
    except DatasetError as e:
        sys.exit(f"error: bad dataset:\n{e}")
    for warning in warnings:
        print(f"warning: {warning}")
    heldout, dev = read_jsonl(HELDOUT_QUESTIONS), read_jsonl(DEV_QUESTIONS)
    statements, unknown = read_jsonl(STATEMENTS), read_jsonl(UNKNOWN_QUESTIONS)

    tokenizer = load_tokenizer(BASE_MODEL)
    try:
        records, too_long = tokenize_all(tokenizer, pairs, prompt, cfg["max_length"], lambda i, p: p["where"])
        heldout_records, heldout_too_long = tokenize_all(tokenizer, heldout, prompt, cfg["max_length"],
                                                         lambda i, p: f"{HELDOUT_QUESTIONS}:{i + 1}")
        dev_records, dev_too_long = tokenize_all(tokenizer, dev, prompt, cfg["max_length"],
                                                 lambda i, p: f"{DEV_QUESTIONS}:{i + 1}")
        unknown_records, unknown_too_long = tokenize_questions(tokenizer, unknown, prompt, cfg["max_length"],
                                                               lambda i: f"{UNKNOWN_QUESTIONS}:{i + 1}")
        unknown_dev_records, unknown_dev_too_long = tokenize_questions(tokenizer, read_jsonl(UNKNOWN_DEV_QUESTIONS),
                                                                       prompt, cfg["max_length"],
                                                                       lambda i: f"{UNKNOWN_DEV_QUESTIONS}:{i + 1}")
        # Refusal pairs are trained like the others and marked, so the evaluations do not test them.
        refusal_records, refusal_too_long = tokenize_all(tokenizer, read_jsonl(REFUSALS), prompt, cfg["max_length"],
                                                         lambda i, p: f"{REFUSALS}:{i + 1}")
    except PromptError as e:
        sys.exit(f"error: {e}")
    statement_records = [{"id": i, "text": s["text"], **tokenize_text(tokenizer, s["text"])}
                         for i, s in enumerate(statements)]
    too_long += [f"{STATEMENTS}:{r['id'] + 1}: statement has {len(r['input_ids'])} tokens, more than "
                 f"parse_qa.max_length = {cfg['max_length']}" for r in statement_records
                 if len(r["input_ids"]) > cfg["max_length"]]
    fail_if_problems(too_long + heldout_too_long + dev_too_long + unknown_too_long + unknown_dev_too_long
                     + refusal_too_long, what="dataset (raise parse_qa.max_length or shorten these)")
    records += [{**r, "id": len(records) + r["id"], "refusal": True} for r in refusal_records]

    write_atomically(TRAINED_QA, to_jsonl(records))
    write_atomically(HELDOUT_QA, to_jsonl(heldout_records))
    write_atomically(DEV_QA, to_jsonl(dev_records))
    write_atomically(STATEMENTS_QA, to_jsonl(statement_records))
    write_atomically(UNKNOWN_QA, to_jsonl(unknown_records))
    write_atomically(UNKNOWN_DEV_QA, to_jsonl(unknown_dev_records))
    write_atomically(PREVIEW, preview(tokenizer, records[:cfg["preview_examples"]]))
    lengths = [len(r["input_ids"]) for r in records]
    print(f"wrote {TRAINED_QA}: {len(records)} records, {sum(lengths)} tokens, longest {max(lengths)} "
          f"(limit {cfg['max_length']}); {STATEMENTS_QA}: {len(statement_records)}, {DEV_QA}: "
          f"{len(dev_records)}, {HELDOUT_QA}: {len(heldout_records)}, {UNKNOWN_QA}: {len(unknown_records)}, "
          f"{UNKNOWN_DEV_QA}: {len(unknown_dev_records)} records ({len(refusal_records)} refusal pairs among "
          f"the {len(records)}); preview in {PREVIEW}")


if __name__ == "__main__":
    try:
        main()
    except ParamsError as e:  # the library raises; the stage says why in one message and exits non-zero
        sys.exit(f"error: {e}")
