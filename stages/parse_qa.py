"""Stage parse_qa: parse data/dataset.txt into tokenized training records.

    python stages/parse_qa.py

Reads parse_qa.* in params.yaml, data/dataset.txt and the tokenizer in models/base. Writes
data/qa.jsonl (one record per pair: question, answer, prompt, q_ids, input_ids, labels) and
data/preview.md, which shows decoded inputs and decoded supervised labels for a few examples.
Any malformed block or over-long example stops the stage with every problem listed by line.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # python stages/x.py: import llm_fft from the repo

from transformers import AutoTokenizer

from llm_fft.data import (IGNORE_INDEX, DatasetError, build_prompt, parse_custom_tokens,
                          tokenize_pair, to_jsonl)
from llm_fft.files import write_atomically
from llm_fft.params import fail_if_problems, load_params, problems_in_section

DATASET = Path("data/dataset.txt")
BASE_MODEL = Path("models/base")
RECORDS = Path("data/qa.jsonl")
PREVIEW = Path("data/preview.md")
SPEC = {
    "max_length": (int, lambda v: v >= 8, "an integer >= 8 (tokens)"),
    "preview_examples": (int, lambda v: v >= 0, "an integer >= 0"),
}


def preview(tokenizer, records):
    """Markdown showing what the model reads and what it is trained to write, token-exact."""
    lines = ["# What the model is trained on", "",
             "`input` is the full decoded input_ids; `supervised` decodes only the tokens whose label "
             "is not -100 (the answer and its EOS). Special tokens are shown.", ""]
    for r in records:
        supervised = [t for t in r["labels"] if t != IGNORE_INDEX]
        lines += [f"## Example {r['id']} (line {r['line']}): {len(r['q_ids'])} prompt + "
                  f"{len(supervised)} supervised tokens", "",
                  "input:", "```", tokenizer.decode(r["input_ids"]), "```",
                  "supervised:", "```", tokenizer.decode(supervised), "```", ""]
    return "\n".join(lines)


def main():
    params = load_params()
    fail_if_problems(problems_in_section(params, "parse_qa", SPEC))
    cfg = params["parse_qa"]
    try:
        pairs = parse_custom_tokens(DATASET.read_text(encoding="utf-8"), DATASET)
    except UnicodeDecodeError as e:
        sys.exit(f"error: {DATASET} is not UTF-8 text: {e}")
    except DatasetError as e:
        sys.exit(f"error: bad dataset:\n{e}")

    tokenizer = AutoTokenizer.from_pretrained(BASE_MODEL)
    records, too_long = [], []
    for i, pair in enumerate(pairs):
        ids = tokenize_pair(tokenizer, pair["question"], pair["answer"])
        if len(ids["input_ids"]) > cfg["max_length"]:
            too_long.append(f"{DATASET}:{pair['line']}: example has {len(ids['input_ids'])} tokens, "
                            f"more than parse_qa.max_length = {cfg['max_length']}: {pair['question']!r}")
        records.append({"id": i, **pair, "prompt": build_prompt(pair["question"]), **ids})
    fail_if_problems(too_long, what="dataset (raise parse_qa.max_length or shorten these)")

    write_atomically(RECORDS, to_jsonl(records))
    write_atomically(PREVIEW, preview(tokenizer, records[:cfg["preview_examples"]]))
    lengths = [len(r["input_ids"]) for r in records]
    print(f"wrote {RECORDS}: {len(records)} records, {sum(lengths)} tokens, "
          f"longest {max(lengths)} (limit {cfg['max_length']}); preview in {PREVIEW}")


if __name__ == "__main__":
    main()
