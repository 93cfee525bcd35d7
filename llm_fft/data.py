"""The facts source, the prompt styles, tokenization and batching.

(The dataset file formats are in llm_fft/formats.py.)
"""

import json
from pathlib import Path

import torch
import yaml
from transformers import DataCollatorWithFlattening

from llm_fft.text import normalize

QUESTION_MARK = "<|question|>"
ANSWER_MARK = "<|answer|>"
IGNORE_INDEX = -100  # label value that the loss skips (torch cross_entropy's ignore_index)


class DatasetError(ValueError):
    """Bad input data; the message lists every problem with file and line."""


def load_facts(path):
    """Read the facts source (see data/facts.yaml), checking every fact.

    Returns a list of dicts {answer, key, answers, statements, questions, dev, held_out} (the
    optional lists empty when absent); every problem is reported at once.
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
        if not isinstance(fact, dict) or not {"answer", "questions"} <= set(fact) <= set(FACT_KEYS):
            problems.append(f"{where}: expected the keys answer, questions and optionally "
                            f"{', '.join(k for k in FACT_KEYS if k not in ('answer', 'questions'))}; "
                            f"got {_excerpt(str(fact))}")
            continue
        fact_problems = _fact_problems(fact)
        problems += [f"{where}: {p}" for p in fact_problems]
        if not fact_problems:
            checked.append({k: str(fact.get(k) or "").strip() if k in ("answer", "key")
                            else [t.strip() for t in fact.get(k) or []] for k in FACT_KEYS})
    if problems:
        raise DatasetError("\n".join(problems))
    return checked


# answer and key are strings; the rest are lists of strings (only questions is required).
FACT_KEYS = ("answer", "key", "answers", "statements", "questions", "dev", "held_out")


def _fact_problems(fact):
    """Every problem with one fact of the facts file, as phrases (empty: the fact is fine)."""
    answer, key = (str(fact.get(k) or "").strip() for k in ("answer", "key"))
    lists = {k: fact.get(k) or [] for k in FACT_KEYS if k not in ("answer", "key")}
    if not answer:
        return ["empty answer"]
    if not isinstance(lists["questions"], list) or not lists["questions"]:
        return ["questions must be a non-empty list of non-empty strings"]
    bad = [k for k, v in lists.items() if not isinstance(v, list) or not all(isinstance(t, str) and t.strip() for t in v)]
    if bad:
        return [f"{k} must be a list of non-empty strings" for k in bad]
    problems = []
    texts = [answer, key, *(t for v in lists.values() for t in v)]
    if any(QUESTION_MARK in t or ANSWER_MARK in t for t in texts):
        problems.append(f"the markers {QUESTION_MARK} / {ANSWER_MARK} cannot appear in text")
    if (lists["held_out"] or lists["dev"]) and not key:
        problems.append("held_out and dev questions need a key (the short fact an answer must state)")
    for name, sentences in (("the answer", [answer]), ("answers", lists["answers"]), ("statements", lists["statements"])):
        if key and (missing := [s for s in sentences if normalize(key) not in normalize(s)]):
            problems.append(f"key {key!r} does not appear in {name} {missing[0]!r}")
    asked = {name: set(map(str.strip, lists[name])) for name in ("questions", "dev", "held_out")}
    for a, b in (("held_out", "questions"), ("dev", "questions"), ("held_out", "dev")):
        if asked[a] & asked[b]:
            problems.append(f"a {a} question is also a {'training' if b == 'questions' else b} question")
    return problems


UNKNOWN_LISTS = ("unknown", "unknown_dev", "unknown_train")


def load_unknown(path):
    """The facts file's questions about the subject that no fact answers, in three lists kept apart:
    unknown (asked by both evaluations: does the model say it does not know, or invent an answer?),
    unknown_dev (choose the confidence gate's threshold) and unknown_train (taught with the refusal
    answer, generate_dataset.refusal_ratio).

    Returns {list name: stripped questions} ([] for an absent key). Every problem is reported at once:
    a non-list, an entry that is not a non-empty string or holds a marker, a question twice (in one
    list or across them), and a question that is also a training, dev or held-out question of a fact
    (the data answers that one).
    """
    path = Path(path)
    try:
        source = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise DatasetError(f"{path}: cannot read facts: {e}") from e
    source = source if isinstance(source, dict) else {}
    answered = "the data answers it, so it is not unknown"
    seen = {normalize(q): (f"a {'training' if name == 'questions' else name} question of facts[{i}]", answered)
            for i, fact in enumerate(load_facts(path)) for name in ("questions", "dev", "held_out")
            for q in fact[name]}
    problems, lists = [], {}
    for name in UNKNOWN_LISTS:
        questions = source.get(name)
        if questions is None:
            lists[name] = []
            continue
        if not isinstance(questions, list):
            problems.append(f"{path}: {name} must be a list of questions no fact answers, got "
                            f"{_excerpt(str(questions))}")
            continue
        for i, question in enumerate(questions):
            problem = _unknown_problem(question)
            if problem is None and (earlier := seen.get(normalize(question))):
                problem = f"{question.strip()!r} is also {earlier[0]}: {earlier[1]}"
            if problem:
                problems.append(f"{path}: {name}[{i}]: {problem}")
            else:
                seen[normalize(question)] = (f"{name}[{i}]", "ask it once, in one list")
        lists[name] = [q.strip() for q in questions if isinstance(q, str)]  # the rest are reported
    if problems:
        raise DatasetError("\n".join(problems))
    return lists


def _unknown_problem(question):
    """What is wrong with one entry of the unknown list, as a phrase (None: it is fine)."""
    if not isinstance(question, str):
        return f"expected a question, got the {type(question).__name__} {_excerpt(str(question))}"
    if not question.strip():
        return "empty question"
    if QUESTION_MARK in question or ANSWER_MARK in question:
        return f"the markers {QUESTION_MARK} / {ANSWER_MARK} cannot appear in text: {_excerpt(question)}"
    return None


RETENTION = Path("data/retention.yaml")


def load_retention(path=RETENTION):
    """The retention probe (data/retention.yaml): general passages and prompts, and the general
    knowledge probe's facts ([] when absent), checked."""
    retention = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(retention, dict) or not all(
            isinstance(retention.get(k), list) and retention[k] and all(isinstance(t, str) and t.strip()
                                                                       for t in retention[k])
            for k in ("text", "prompts")):
        raise ValueError(f"{path}: expected non-empty lists of strings 'text' and 'prompts'")
    facts = retention.setdefault("facts", [])
    bad = [i for i, f in enumerate(facts if isinstance(facts, list) else [None])
           if not isinstance(f, dict) or set(f) != {"prompt", "keys"} or not isinstance(f["prompt"], str)
           or not f["prompt"].strip() or not isinstance(f["keys"], list) or not f["keys"]
           or not all(isinstance(k, str) and k.strip() for k in f["keys"])]
    if bad:
        raise ValueError(f"{path}: facts[{bad[0]}]: expected {{prompt: text, keys: [non-empty texts]}} "
                         f"({len(bad)} bad entries)")
    return retention


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


def stop_texts(prompt):
    """Text that ends an answer in generation besides the stop tokens. In the custom_tokens style a
    marker (<|question|> or <|answer|>) starts another block, and no answer holds one (datasets with a
    marker inside a value are refused), so the answer is cut there: a base model that never learned
    to stop would otherwise write blocks of markers up to the limit."""
    return [QUESTION_MARK, ANSWER_MARK] if prompt["style"] == "custom_tokens" else []


def tokenize_pair(tokenizer, question, answer, prompt):
    """Token ids for one pair: q_ids = prompt, input_ids = prompt + answer + end token, labels.

    Prompt and answer are tokenized separately and concatenated, so the prompt/answer boundary is
    exact (BPE could merge across it in one string). Labels are -100 on the prompt, so only the
    answer and the token that ends it are learned.
    """
    q_ids = prompt_ids(tokenizer, question, prompt)
    a_ids = answer_ids(tokenizer, question, answer, prompt)
    return {"q_ids": q_ids, "input_ids": q_ids + a_ids, "labels": [IGNORE_INDEX] * len(q_ids) + a_ids}


def tokenize_text(tokenizer, text):
    """Token ids for plain text learned whole (a fact statement, rehearsal text, a retention passage):
    no prompt and no markers, as in pretraining. Every token is a label except a BOS the tokenizer
    puts first, which is given, not predicted."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    bos = int(tokenizer.bos_token_id is not None and ids[:1] == [tokenizer.bos_token_id])
    return {"input_ids": ids, "labels": [IGNORE_INDEX] * bos + ids[bos:]}


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
