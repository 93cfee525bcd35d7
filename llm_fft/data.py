"""The facts source, the prompt styles, tokenization and batching.

(The dataset file formats are in llm_fft/formats.py.)
"""

import json
from pathlib import Path

import torch
import yaml
from transformers import DataCollatorWithFlattening

QUESTION_MARK = "<|question|>"
ANSWER_MARK = "<|answer|>"
IGNORE_INDEX = -100  # label value that the loss skips (torch cross_entropy's ignore_index)


class DatasetError(ValueError):
    """Bad input data; the message lists every problem with file and line."""


def load_facts(path):
    """Read the facts source (see data/facts.yaml), checking every fact.

    Returns a list of dicts {answer, key, questions, held_out}; every problem is reported at once.
    """
    path = Path(path)
    try:
        facts = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise DatasetError(f"{path}: cannot read facts: {e}") from e
    if not isinstance(facts, dict) or not isinstance(facts.get("facts"), list) or not facts["facts"]:
        raise DatasetError(f"{path}: expected a mapping with a non-empty 'facts' list")
    problems, checked = [], []
    for i, fact in enumerate(facts["facts"]):
        where = f"{path}: facts[{i}]"
        if not isinstance(fact, dict) or not {"answer", "questions"} <= set(fact) <= FACT_KEYS:
            problems.append(f"{where}: expected the keys answer, questions and optionally key, held_out; "
                            f"got {_excerpt(str(fact))}")
            continue
        answer, key = (str(fact.get(k) or "").strip() for k in ("answer", "key"))
        questions, held_out = fact["questions"], fact.get("held_out") or []
        texts = [answer, key, *map(str, questions if isinstance(questions, list) else []), *map(str, held_out)]
        if not answer:
            problems.append(f"{where}: empty answer")
        elif not isinstance(questions, list) or not questions or not all(
                isinstance(q, str) and q.strip() for q in questions):
            problems.append(f"{where}: questions must be a non-empty list of non-empty strings")
        elif not isinstance(held_out, list) or not all(isinstance(q, str) and q.strip() for q in held_out):
            problems.append(f"{where}: held_out must be a list of non-empty strings")
        elif any(QUESTION_MARK in t or ANSWER_MARK in t for t in texts):
            problems.append(f"{where}: the markers {QUESTION_MARK} / {ANSWER_MARK} cannot appear in text")
        elif held_out and not key:
            problems.append(f"{where}: held_out questions need a key (the short fact an answer must state)")
        elif key and normalize(key) not in normalize(answer):
            problems.append(f"{where}: key {key!r} does not appear in the answer {answer!r}")
        elif set(map(str.strip, held_out)) & set(map(str.strip, questions)):
            problems.append(f"{where}: a held_out question is also a training question")
        else:
            checked.append({"answer": answer, "key": key, "questions": [q.strip() for q in questions],
                            "held_out": [q.strip() for q in held_out]})
    if problems:
        raise DatasetError("\n".join(problems))
    return checked


FACT_KEYS = {"answer", "key", "questions", "held_out"}


def normalize(text):
    """The form answers are compared in: whitespace collapsed, trailing punctuation dropped."""
    return " ".join(text.split()).rstrip(".!?。")


def _excerpt(text, width=40):
    text = " ".join(text.split())
    return repr(text if len(text) <= width else text[:width] + "…")


# --- Prompt styles: how a question becomes the model's input, identical in parse_qa (training),
# both evaluations and ask/chat. `prompt` is the prompt section of params.yaml.
PROMPT_STYLES = ("custom_tokens", "plain", "chat")
PROMPT_SPEC = {
    "style": (str, lambda v: v in PROMPT_STYLES, f"one of {', '.join(PROMPT_STYLES)}"),
    "system": (str, None, "a string; the chat style's system message, '' for none"),
    "markers": (str, lambda v: v in ("text", "special_tokens"), "text or special_tokens"),
}


class PromptError(ValueError):
    """The prompt style cannot work with this tokenizer (for example chat without a chat template)."""


def build_prompt(question, prompt, tokenizer=None):
    """The prompt text the answer follows (the chat style needs the tokenizer's template)."""
    if prompt["style"] == "custom_tokens":
        return f"{QUESTION_MARK}\n{question}\n{ANSWER_MARK}\n"
    if prompt["style"] == "plain":
        return question  # the answer follows after one space, which belongs to the answer's tokens
    return _chat_prompt_and_turn_end(tokenizer, question, prompt)[0]


def _chat_prompt_and_turn_end(tokenizer, question, prompt):
    """(prompt text up to the assistant's turn, the text that closes an assistant turn), from the
    tokenizer's own chat template: ChatML's <|im_end|>, Llama-3's <|eot_id|>, ..."""
    if not getattr(tokenizer, "chat_template", None):
        raise PromptError("prompt.style = chat needs a tokenizer with a chat template, and this model has "
                          "none (base models usually do not): use prompt.style custom_tokens or plain")
    messages = ([{"role": "system", "content": prompt["system"]}] if prompt["system"] else []) + [
        {"role": "user", "content": question}]
    head = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    sentinel = "\x00ANSWER\x00"  # stands for the answer, to find what the template puts after it
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": sentinel}], tokenize=False)
    if not full.startswith(head) or sentinel not in full[len(head):]:
        raise PromptError("the chat template renders the conversation so that the generation prompt is "
                          "not its prefix; the answer boundary cannot be found")
    # Whatever follows the turn-closing token (ChatML's newline) is not part of the answer turn.
    turn_end = full[len(head):].split(sentinel, 1)[1].rstrip()
    if not turn_end:
        raise PromptError("the chat template puts no end-of-turn marker after the assistant's answer")
    return head, turn_end


def prompt_ids(tokenizer, question, prompt):
    """Token ids of the prompt. Custom-token and plain prompts get the tokenizer's own special tokens
    (a BOS where the model wants one, e.g. Gemma); a chat template writes its own."""
    if prompt["style"] == "chat":
        return tokenizer(build_prompt(question, prompt, tokenizer), add_special_tokens=False)["input_ids"]
    return tokenizer(build_prompt(question, prompt), add_special_tokens=True)["input_ids"]


def answer_ids(tokenizer, question, answer, prompt):
    """Token ids the model learns to write after the prompt: the answer and the token that ends it
    (EOS; in the chat style the template's end-of-turn token). Never truncated."""
    if prompt["style"] == "chat":
        turn_end = _chat_prompt_and_turn_end(tokenizer, question, prompt)[1]
        return (tokenizer(answer, add_special_tokens=False)["input_ids"]
                + tokenizer(turn_end, add_special_tokens=False)["input_ids"])
    text = " " + answer if prompt["style"] == "plain" else answer
    # EOS appended by id: some tokenizers ignore add_eos_token.
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def stop_ids(tokenizer, prompt):
    """Token ids that end an answer in generation: EOS, and in the chat style the end-of-turn token."""
    ids = [tokenizer.eos_token_id]
    if prompt["style"] == "chat":
        turn_end = _chat_prompt_and_turn_end(tokenizer, "?", prompt)[1]
        ids.append(tokenizer(turn_end, add_special_tokens=False)["input_ids"][-1])
    return sorted(set(ids))


def tokenize_pair(tokenizer, question, answer, prompt):
    """Token ids for one pair: q_ids = prompt, input_ids = prompt + answer + end token, labels.

    Prompt and answer are tokenized separately and concatenated, so the prompt/answer boundary is
    exact (BPE could merge across it in one string). Labels are -100 on the prompt, so only the
    answer and the token that ends it are learned.
    """
    q_ids = prompt_ids(tokenizer, question, prompt)
    a_ids = answer_ids(tokenizer, question, answer, prompt)
    return {"q_ids": q_ids, "input_ids": q_ids + a_ids, "labels": [IGNORE_INDEX] * len(q_ids) + a_ids}


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


def collate_packed(records):
    """The whole batch as one row, examples end to end, with no padding at all (finetune.packing).

    position_ids restart at 0 with each example and there is no attention_mask: that is how
    transformers tells the examples apart, and its attention masks (SDPA, eager; FlashAttention's
    variable-length kernels) keep every token from attending to another example, provided the model
    runs without a KV cache (finetune sets use_cache = False; with a cache transformers does not look
    for packed examples and reads the row as one sequence). The first label
    of each example is -100, so no example learns to predict the next one's first token.
    """
    flatten = DataCollatorWithFlattening(return_tensors="pt")
    return flatten([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in records])


def to_jsonl(rows):
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
