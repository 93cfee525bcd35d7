"""The dataset file format, the training prompt, tokenization and batching.

Dataset file (custom-token format of the seed notes), one block per pair:

    <|question|>
    별무리섬은 어느 바다에 있나요?
    <|answer|>
    별무리섬은 제주도 남쪽 바다에 있는 작은 섬입니다.
"""

import json
import re
from pathlib import Path

import torch
import yaml

QUESTION_MARK = "<|question|>"
ANSWER_MARK = "<|answer|>"
IGNORE_INDEX = -100  # label value that the loss skips (torch cross_entropy's ignore_index)


class DatasetError(ValueError):
    """Bad input data; the message lists every problem with file and line."""


def load_facts(path):
    """Read the facts source (YAML: subject + list of question/answer pairs), checking every pair."""
    path = Path(path)
    try:
        facts = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise DatasetError(f"{path}: cannot read facts: {e}") from e
    if not isinstance(facts, dict) or not isinstance(facts.get("pairs"), list) or not facts["pairs"]:
        raise DatasetError(f"{path}: expected a mapping with a non-empty 'pairs' list")
    problems, pairs = [], []
    for i, pair in enumerate(facts["pairs"]):
        where = f"{path}: pairs[{i}]"
        if not isinstance(pair, dict) or set(pair) != {"question", "answer"}:
            problems.append(f"{where}: expected exactly the keys 'question' and 'answer', got {pair!r}")
            continue
        question, answer = (str(pair[k] or "").strip() for k in ("question", "answer"))
        if not question or not answer:
            problems.append(f"{where}: empty question or answer")
        elif QUESTION_MARK in question + answer or ANSWER_MARK in question + answer:
            problems.append(f"{where}: the markers {QUESTION_MARK} / {ANSWER_MARK} cannot appear in text")
        else:
            pairs.append((question, answer))
    if problems:
        raise DatasetError("\n".join(problems))
    return pairs


def render_custom_tokens(pairs):
    """Write pairs in the custom-token format; parse_custom_tokens reads it back unchanged."""
    return "".join(f"{QUESTION_MARK}\n{q}\n{ANSWER_MARK}\n{a}\n\n" for q, a in pairs)


def parse_custom_tokens(text, filename):
    """The seed's parse, made strict: split on <|question|>, split each block on its <|answer|>, strip.

    Returns a list of dicts {question, answer, line}. Every malformed block is reported (file and
    line) in one DatasetError; nothing is skipped silently.
    """
    text = text.lstrip("\ufeff").replace("\r\n", "\n")
    starts = [m.start() for m in re.finditer(re.escape(QUESTION_MARK), text)]
    problems, pairs = [], []

    def line_of(pos):
        return text.count("\n", 0, pos) + 1

    head = text[:starts[0]] if starts else text
    stray = re.search(r"\S", head)
    if stray:
        problems.append(f"{filename}:{line_of(stray.start())}: text before the first "
                        f"{QUESTION_MARK}: {_excerpt(head)}")
    for start, end in zip(starts, starts[1:] + [len(text)]):
        line = line_of(start)
        block = text[start + len(QUESTION_MARK):end]
        where = f"{filename}:{line}"
        if ANSWER_MARK not in block:
            problems.append(f"{where}: block has no {ANSWER_MARK}: {_excerpt(block)}")
            continue
        question, answer = (part.strip() for part in block.split(ANSWER_MARK, 1))
        if ANSWER_MARK in answer:
            problems.append(f"{where}: block has more than one {ANSWER_MARK}: {_excerpt(block)}")
        elif not question:
            problems.append(f"{where}: empty question")
        elif not answer:
            problems.append(f"{where}: empty answer to {_excerpt(question)}")
        else:
            pairs.append({"question": question, "answer": answer, "line": line})
    if not starts and not problems:
        problems.append(f"{filename}: no {QUESTION_MARK} block found")
    if problems:
        raise DatasetError("\n".join(problems))
    return pairs


def _excerpt(text, width=40):
    text = " ".join(text.split())
    return repr(text if len(text) <= width else text[:width] + "…")


def build_prompt(question):
    """The prompt the model sees, in training and in both evaluations: the answer follows it."""
    return f"{QUESTION_MARK}\n{question}\n{ANSWER_MARK}\n"


def prompt_ids(tokenizer, question):
    """Token ids of the prompt, with the tokenizer's own special tokens (a BOS where the model wants one)."""
    return tokenizer(build_prompt(question), add_special_tokens=True)["input_ids"]


def tokenize_pair(tokenizer, question, answer):
    """Token ids for one pair: q_ids = prompt, input_ids = prompt + answer + EOS, labels.

    Prompt and answer are tokenized separately and concatenated, so the prompt/answer boundary is
    exact (BPE could merge across it in one string). The prompt gets the tokenizer's own special
    tokens (a BOS where the model expects one); the answer gets none, then EOS is appended by id:
    some tokenizers ignore add_eos_token. Labels are -100 on the prompt, so only the answer and its
    EOS are learned.
    """
    q_ids = prompt_ids(tokenizer, question)
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    input_ids = q_ids + answer_ids + [tokenizer.eos_token_id]
    labels = [IGNORE_INDEX] * len(q_ids) + answer_ids + [tokenizer.eos_token_id]
    return {"q_ids": q_ids, "input_ids": input_ids, "labels": labels}


def collate(records, pad_id):
    """Right-pad one batch to its own longest example (dynamic padding).

    Padding is masked by position, never by token id: pad == EOS here, and the real EOS at the end
    of each answer must stay supervised.
    """
    longest = max(len(r["input_ids"]) for r in records)
    input_ids = torch.full((len(records), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(records), longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(records), longest), dtype=torch.long)
    for row, r in enumerate(records):
        n = len(r["input_ids"])
        input_ids[row, :n] = torch.tensor(r["input_ids"])
        labels[row, :n] = torch.tensor(r["labels"])
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def to_jsonl(rows):
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
