"""Prompt styles: how a question becomes the model's input and an answer its target, identical in
parse_qa (training), both evaluations and ask/chat; and how plain text is tokenized. `prompt` is the
prompt section of params.yaml."""

from llm_fft.batching import IGNORE_INDEX

QUESTION_MARK = "<|question|>"
ANSWER_MARK = "<|answer|>"
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
