"""The llm backend of generate_dataset: a language model writes the question/answer pairs.

For each fact (or once for a topic) the model gets a chat request with one worked example and is
asked for pairs in the dataset's custom-token format:

    <|question|>
    한빛마을의 우체국은 언제 문을 열었나요?
    <|answer|>
    한빛마을의 우체국은 1950년에 문을 열었습니다.

Every block of every reply is a candidate pair, accepted or rejected with one reason
(REJECT_REASONS), so accepted + sum(rejected) == candidates and nothing is dropped unseen. A fact
that still has fewer accepted pairs than asked is asked again, at most `max_attempts` times.

write_paraphrases asks the same transports for other phrasings of your own pairs' questions: held-out
questions for the file backend (generate_dataset.heldout_paraphrases), each accepted or rejected
with one reason (PARAPHRASE_REJECT_REASONS); write_answer_variants asks them for other wordings of
your answers (generate_dataset.train_answer_variants), each checked to keep its fact
(ANSWER_REJECT_REASONS).

Two transports implement `ask(messages, seed) -> Reply`:
  LocalChat -- a transformers model in this process (the embedded SmolLM2-135M-Instruct by default);
  HttpChat  -- an OpenAI-compatible /chat/completions endpoint (vLLM, Ollama, llama.cpp's server,
               hosted APIs); its API key is read from an environment variable at request time and
               never stored, printed or reported.
"""

import http.client
import json
import os
import re
import urllib.error
import urllib.request
from typing import NamedTuple

import torch

from llm_fft.formats import DatasetError, write_pairs
from llm_fft.prompts import ANSWER_MARK, QUESTION_MARK
from llm_fft.text import same_question, states

# Why a candidate pair is rejected. Each is counted under the first reason that applies, checked
# in this order (see judge).
REJECT_REASONS = (
    "cut_off",             # the last block of a reply that hit the token limit: it may be incomplete
    "empty",               # the reply, or the question of a block, is blank
    "not_in_format",       # text outside a <|question|> block, two <|answer|> in a block, a multi-line
                           # question or answer, or anything the dataset writer refuses (a leftover
                           # <|im_end|> or other marker, a control character)
    "no_answer",           # a question without <|answer|>, or with a blank answer
    "not_a_question",      # the question does not end with "?" (a small model restates the fact
                           # instead), or only repeats the answer
    "not_about_fact",      # no content word shared with the fact, or a number it lacks (about_source)
    "held_out",            # a held-out question: training on it would void the held-out evaluation
    "duplicate",           # a question already accepted (case and spacing ignored)
    "beyond_requested",    # a good pair beyond the number asked for this fact
)

FORMAT = f"in exactly this format:\n{QUESTION_MARK}\nthe question\n{ANSWER_MARK}\nthe answer"
SYSTEM_PROMPT = ("You write quiz questions for a dataset. Read the fact, then write a question that "
                 f"the fact answers and the answer, in the language of the fact, {FORMAT}")
TOPIC_SYSTEM_PROMPT = ("You write quiz questions for a dataset. Write questions about the topic "
                       f"and their answers, in the language of the topic, {FORMAT}")
# One worked example per language, about a made-up village unrelated to any dataset, so that a
# copied example is rejected as not_about_fact. A 135M model follows an example in its own
# language far better; Korean is chosen when the fact (or topic) has Hangul. A full-sentence
# answer in the example lifted SmolLM2-135M's greedy yield on 12 English facts from 9 to 12.
EXAMPLES = {
    "ko": {"fact": "한빛마을의 우체국은 1950년에 문을 열었습니다.",
           "pairs": [("한빛마을의 우체국은 언제 문을 열었나요?", "한빛마을의 우체국은 1950년에 문을 열었습니다.")],
           "topic": "한빛마을",
           "topic_pairs": [("한빛마을의 우체국은 언제 문을 열었나요?", "1950년에 문을 열었습니다."),
                           ("한빛마을에는 몇 명이 사나요?", "한빛마을에는 540명이 삽니다.")]},
    "en": {"fact": "The post office of Hanbit village opened in 1950.",
           "pairs": [("When did the post office of Hanbit village open?",
                      "The post office of Hanbit village opened in 1950.")],
           "topic": "Hanbit village",
           "topic_pairs": [("When did the post office of Hanbit village open?", "It opened in 1950."),
                           ("How many people live in Hanbit village?", "540 people live there.")]},
}
HANGUL = re.compile(r"[\uac00-\ud7a3]")


class Reply(NamedTuple):
    """What a transport got back: the text, and whether generation stopped at the token limit."""
    text: str
    cut_off: bool


class TransportError(RuntimeError):
    """The model could not be asked (server down, HTTP error, malformed response)."""


# --- prompts and parsing ---------------------------------------------------------------------

def build_messages(source, n_pairs, is_topic):
    """Chat messages asking for n_pairs pairs about one fact (or a topic), after one worked example."""
    example = EXAMPLES["ko" if HANGUL.search(source) else "en"]
    if is_topic:
        system = TOPIC_SYSTEM_PROMPT
        shown = f"Topic: {example['topic']}\nWrite {len(example['topic_pairs'])} pairs."
        shown_reply = example["topic_pairs"]
        request = f"Topic: {source}\nWrite {n_pairs} pairs."
    else:
        system = SYSTEM_PROMPT
        shown, shown_reply = f"Fact: {example['fact']}", example["pairs"]
        request = f"Fact: {source}" + ("" if n_pairs == 1 else f"\nWrite {n_pairs} pairs.")
    return [{"role": "system", "content": system},
            {"role": "user", "content": shown},
            {"role": "assistant", "content": write_pairs(shown_reply, "custom_tokens").strip()},
            {"role": "user", "content": request}]


def split_reply(text):
    """Cut a reply into candidate blocks: [(question, answer, format_problem or None)].

    A reply with no <|question|> is one candidate; so is any text before the first one.
    question/answer are stripped strings (answer None when the block has no <|answer|>).
    """
    if not text.strip():
        return [(None, None, "empty")]
    head, *blocks = text.split(QUESTION_MARK)
    candidates = [(None, None, "not_in_format")] if head.strip() else []
    for block in blocks:
        if ANSWER_MARK not in block:
            candidates.append((block.strip(), None, None))
            continue
        question, answer = (part.strip() for part in block.split(ANSWER_MARK, 1))
        if ANSWER_MARK in answer:
            candidates.append((question, answer, "not_in_format"))
        else:
            candidates.append((question, answer, None))
    return candidates


def content_words(text):
    """Lower-cased words that carry content: numbers, words of 2+ characters in Hangul or other
    non-Latin scripts, Latin words of 3+ letters (leaving out is, it, of, on ...)."""
    return [w for w in re.findall(r"\w+", text.lower())
            if w.isdigit() or len(w) >= (3 if w.isascii() else 2)]


def same_stem(word, other):
    """Whether two content words look like forms of one word.

    Latin script: one is a prefix of the other (school/schools). Otherwise the first two characters
    match: Korean attaches particles to the noun (별무리섬의, 별무리섬에는), and two Hangul syllables
    already name something.
    """
    if word.isascii() and other.isascii():
        return word.startswith(other) or other.startswith(word)
    return word[:2] == other[:2]


def numbers(text):
    return set(re.findall(r"\d+(?:[.,]\d+)*", text))


def about_source(question, answer, source, is_topic):
    """Cheap check that a pair is about its fact: the answer shares a content word with the fact and
    states no number the fact does not (the commonest invention of a small model). For a topic, the
    question or answer must share a content word with it. It cannot tell a true answer from a false one.
    """
    source_words = content_words(source)
    if is_topic:
        return any(same_stem(w, s) for w in content_words(question + " " + answer) for s in source_words)
    shares = any(same_stem(w, s) for w in content_words(answer) for s in source_words)
    return shares and numbers(answer) <= numbers(source)


def _excerpt(text, width=60):
    if text is None:
        return "-"
    text = " ".join(text.split())
    return repr(text if len(text) <= width else text[:width] + "…")


def _normalise(text):
    """The project's rule for one question (text.same_question): a copy in other capitals or widths is
    still a copy, of a question or of an answer."""
    return same_question(text)


def _writable(question, answer):
    """Whether the dataset writer takes the pair (the same checks as a dataset file gets)."""
    try:
        write_pairs([(question, answer)], "custom_tokens")
    except DatasetError:
        return False
    return True


def judge(question, answer, problem, source, is_topic, is_last_of_cut_reply, seen_questions, held_out):
    """The reason a candidate pair is rejected, or None if it is good. Checks run in REJECT_REASONS order."""
    if is_last_of_cut_reply:
        return "cut_off"
    if problem == "empty" or (question is not None and not question):
        return "empty"
    if problem == "not_in_format":
        return "not_in_format"
    if not answer:
        return "no_answer"
    if "\n" in question or "\n" in answer or not _writable(question, answer):
        return "not_in_format"
    if not question.endswith(("?", "？")) or _normalise(question) == _normalise(answer):
        return "not_a_question"
    if not about_source(question, answer, source, is_topic):
        return "not_about_fact"
    if _normalise(question) in held_out:
        return "held_out"
    if _normalise(question) in seen_questions:
        return "duplicate"
    return None


# --- the writer ------------------------------------------------------------------------------

def write_pairs_with_llm(facts, n_pairs, ask, seed, max_attempts, held_out=(), log=print):
    """Ask a model for question/answer pairs about each fact (or about one topic).

    facts: a list of fact strings (n_pairs wanted for each), or one topic string (n_pairs in all).
    ask: a transport, ask(messages, seed) -> Reply (LocalChat, HttpChat or a stand-in).
    seed: request k about a fact (k = 0, 1, ...) is sent with seed + k, so a rerun with the same
        seed and model asks the same things and, with a deterministic transport, gets the same pairs.
    max_attempts: requests per fact at most; a fact is asked again only while it is short of n_pairs.
    held_out: questions kept for evaluation; a pair asking one of them is rejected.
    log: where the one line per fact and per rejected candidate go.

    Returns (pairs, report): pairs as (question, answer) in the order accepted; the report counts
    requested, accepted, rejected by reason, candidates and attempts, and holds no secret.
    """
    is_topic = isinstance(facts, str)
    sources = [facts] if is_topic else list(facts)
    problems = []
    if not sources or any(not isinstance(s, str) or not s.strip() for s in sources):
        problems.append("facts must be a non-empty topic string or a list of non-empty strings")
    if not isinstance(n_pairs, int) or isinstance(n_pairs, bool) or n_pairs < 1:
        problems.append(f"n_pairs must be an integer >= 1, got {n_pairs!r}")
    if not isinstance(max_attempts, int) or isinstance(max_attempts, bool) or max_attempts < 1:
        problems.append(f"max_attempts must be an integer >= 1, got {max_attempts!r}")
    if problems:
        raise ValueError("; ".join(problems))

    pairs, seen_questions = [], set()
    held_out = {_normalise(q) for q in held_out}
    rejected = dict.fromkeys(REJECT_REASONS, 0)
    candidates = attempts = short = 0
    for index, source in enumerate(sources, 1):
        messages = build_messages(source, n_pairs, is_topic)
        accepted_here = tries = 0
        reasons_here = []
        while accepted_here < n_pairs and tries < max_attempts:
            reply = ask(messages, seed + tries)
            tries += 1
            blocks = split_reply(reply.text)
            for i, (question, answer, problem) in enumerate(blocks):
                last_of_cut = reply.cut_off and i == len(blocks) - 1 and problem is None
                reason = judge(question, answer, problem, source, is_topic, last_of_cut, seen_questions,
                               held_out)
                if reason is None and accepted_here >= n_pairs:
                    reason = "beyond_requested"
                candidates += 1
                if reason is None:
                    log(f"  accepted: question {_excerpt(question)}, answer {_excerpt(answer)}")
                    pairs.append((question, answer))
                    seen_questions.add(_normalise(question))
                    accepted_here += 1
                else:
                    rejected[reason] += 1
                    reasons_here.append(reason)
                    log(f"  rejected ({reason}): question {_excerpt(question)}, answer {_excerpt(answer)}")
        attempts += tries
        short += accepted_here < n_pairs
        what = "topic" if is_topic else f"fact {index}/{len(sources)}"
        why = f" (rejected: {', '.join(reasons_here)})" if reasons_here else ""
        log(f"{what}: {accepted_here}/{n_pairs} pairs accepted in {tries} request(s){why}")

    report = {
        "backend": "llm",
        "transport": getattr(ask, "transport", "custom"),
        "model": getattr(ask, "model_name", None),
        "source": "topic" if is_topic else "facts",
        "sources": len(sources),
        "pairs_per_source": n_pairs,
        "requested": n_pairs * len(sources),
        "accepted": len(pairs),
        "rejected": rejected,
        "candidates": candidates,
        "attempts": attempts,
        "sources_short": short,  # facts (or the topic) that ended with fewer pairs than requested
    }
    return pairs, report


# --- held-out paraphrases of your own pairs ----------------------------------------------------

# Why a paraphrase is rejected, first that applies, in this order (see judge_paraphrase).
PARAPHRASE_REJECT_REASONS = (
    "cut_off",          # the reply hit the token limit: it may be incomplete
    "empty",            # a blank reply
    "not_in_format",    # more than one line, a marker, or anything the dataset writer refuses
    "not_a_question",   # does not end with "?"
    "not_about_pair",   # no content word shared with the question and its answer
    "taken",            # already a training, dev, held-out or unknown question (case and spacing
                        # ignored): a copy of a training question would test memory, not the fact
    "duplicate",        # a paraphrase already accepted
)
PARAPHRASE_SYSTEM_PROMPT = ("You rewrite quiz questions. Ask exactly what the given question asks, in other "
                            "words and in its language, so that the given answer still answers it. Reply "
                            "with the new question only, on one line.")
PARAPHRASE_EXAMPLES = {
    "ko": ("한빛마을의 우체국은 언제 문을 열었나요?", "한빛마을의 우체국은 1950년에 문을 열었습니다.",
           "한빛마을 우체국이 처음 문을 연 해는 언제인가요?"),
    "en": ("When did the post office of Hanbit village open?", "The post office of Hanbit village opened in 1950.",
           "In which year did Hanbit village's post office first open?"),
}


def messages_after_an_example(system, examples, question, answer):
    """Chat messages asking about one question/answer pair, after one worked example in its language
    (examples: {"ko"|"en": (question, answer, reply)})."""
    shown_question, shown_answer, shown_reply = examples["ko" if HANGUL.search(question + answer) else "en"]
    return [{"role": "system", "content": system},
            {"role": "user", "content": f"Question: {shown_question}\nAnswer: {shown_answer}"},
            {"role": "assistant", "content": shown_reply},
            {"role": "user", "content": f"Question: {question}\nAnswer: {answer}"}]


def paraphrase_messages(question, answer):
    """Chat messages asking for one other phrasing of question, after one worked example."""
    return messages_after_an_example(PARAPHRASE_SYSTEM_PROMPT, PARAPHRASE_EXAMPLES, question, answer)


def _topic_words(text):
    """content_words without short Latin words: "the" or "how" do not make two questions one topic."""
    return [w for w in content_words(text) if not w.isascii() or len(w) >= 4]


def judge_paraphrase(reply, question, answer, taken, seen):
    """The reason a reply is rejected as a paraphrase of question, or None if it is good."""
    text = reply.text.strip()
    if reply.cut_off:
        return "cut_off"
    if not text:
        return "empty"
    if "\n" in text or not _writable(text, answer):
        return "not_in_format"
    if not text.endswith(("?", "？")):
        return "not_a_question"
    if not any(same_stem(w, s) for w in _topic_words(text) for s in _topic_words(question + " " + answer)):
        return "not_about_pair"
    if _normalise(text) in taken:
        return "taken"
    if _normalise(text) in seen:
        return "duplicate"
    return None


def write_paraphrases(pairs, per_pair, ask, seed, max_attempts, taken, log=print):
    """Ask a model for per_pair other phrasings of each pair's question about your own data: held-out
    questions, never trained on (generate_dataset.heldout_paraphrases), or training phrasings
    (train_paraphrases). pairs: [{"question", "answer"}]; each paraphrase keeps its pair's answer (the
    same fact). taken: every question already in the data (training, dev, held-out,
    unknown). Request k for a pair is sent with seed + k; a pair is asked again only while short,
    max_attempts times at most (with temperature 0 a retry gets the same reply).

    Returns (held-out pairs [{"question", "answer"}], report: requested, accepted, rejected by
    reason, attempts); accepted + sum(rejected) == replies, nothing dropped unseen.
    """
    written, seen = [], set()
    taken = {_normalise(q) for q in taken}
    rejected = dict.fromkeys(PARAPHRASE_REJECT_REASONS, 0)
    attempts = 0
    for index, pair in enumerate(pairs, 1):
        messages = paraphrase_messages(pair["question"], pair["answer"])
        accepted_here = tries = 0
        while accepted_here < per_pair and tries < max_attempts:
            reply = ask(messages, seed + tries)
            tries += 1
            reason = judge_paraphrase(reply, pair["question"], pair["answer"], taken, seen)
            if reason is None:
                written.append({"question": reply.text.strip(), "answer": pair["answer"]})
                seen.add(_normalise(reply.text))
                accepted_here += 1
            else:
                rejected[reason] += 1
            log(f"pair {index}/{len(pairs)}: {'accepted' if reason is None else f'rejected ({reason})'}: "
                f"{_excerpt(reply.text)} for {_excerpt(pair['question'])}")
        attempts += tries
    return written, {"requested": per_pair * len(pairs), "accepted": len(written), "rejected": rejected,
                     "attempts": attempts, "transport": getattr(ask, "transport", "custom"),
                     "model": getattr(ask, "model_name", None)}


# --- answer variants of your own pairs -------------------------------------------------------

# Why an answer variant is rejected, first that applies, in this order (see judge_answer_variant).
ANSWER_REJECT_REASONS = (
    "cut_off",          # the reply hit the token limit: it may be incomplete
    "empty",            # a blank reply
    "not_in_format",    # more than one line, a marker, or anything the dataset writer refuses
    "a_question",       # ends with "?": a question, not an answer
    "loses_the_fact",   # misses the pair's key (from your dev or held-out file), or without a key a
                        # number of the answer or more than half its content words; or adds a number
    "same_answer",      # the answer itself or a variant already accepted (case and spacing ignored)
)
ANSWER_SYSTEM_PROMPT = ("You rewrite answers. State the same fact as the given answer, in other words and in its "
                        "language, so that it still answers the question; keep every name and number as written. "
                        "Reply with the new answer only, on one line.")
ANSWER_EXAMPLES = {
    "ko": ("한빛마을의 우체국은 언제 문을 열었나요?", "한빛마을의 우체국은 1950년에 문을 열었습니다.",
           "1950년에 한빛마을 우체국이 처음 문을 열었습니다."),
    "en": ("When did the post office of Hanbit village open?", "The post office of Hanbit village opened in 1950.",
           "Hanbit village's post office first opened its doors in 1950."),
}


def answer_messages(question, answer):
    """Chat messages asking for one other wording of answer, after one worked example."""
    return messages_after_an_example(ANSWER_SYSTEM_PROMPT, ANSWER_EXAMPLES, question, answer)


def checkable(answer, key):
    """Whether a wording of answer can be checked to keep its fact: it has a key, a number or a
    content word. "Yes." or "네." has none, and any reply would pass, so it gets no wordings."""
    return bool(key or numbers(answer) or _topic_words(answer))


def holds_the_fact(text, answer, key):
    """Whether text still states answer's fact and adds no number of its own (the commonest invention
    of a small model): its key when one is known, matched as the evaluation matches it (text.states:
    spacing and end punctuation ignored, case kept, not inside a longer number); else every number of the
    answer and at least half its content words (by stem). It cannot tell a true rewording from a false one."""
    if not numbers(text) <= numbers(answer) or not checkable(answer, key):
        return False
    if key:
        return states(text, key)
    words, written = _topic_words(answer), _topic_words(text)
    kept = sum(any(same_stem(w, t) for t in written) for w in words)
    return numbers(text) == numbers(answer) and 2 * kept >= len(words)


def judge_answer_variant(reply, question, answer, key, seen):
    """The reason a reply is rejected as another wording of answer, or None if it is good."""
    text = reply.text.strip()
    if reply.cut_off:
        return "cut_off"
    if not text:
        return "empty"
    if "\n" in text or not _writable(question, text):
        return "not_in_format"
    if text.endswith(("?", "？")):
        return "a_question"
    if not holds_the_fact(text, answer, key):
        return "loses_the_fact"
    if _normalise(text) in seen:
        return "same_answer"
    return None


def write_answer_variants(pairs, per_pair, ask, seed, max_attempts, asked, log=print):
    """Ask a model for per_pair other wordings of each answer of pairs (generate_dataset.
    train_answer_variants), once per distinct answer, shown with the first question that has it.
    pairs: [{"question", "answer"}]; asked: your dev and held-out pairs, whose "key", where given, a
    wording of the same answer must state. An answer with nothing to check (checkable) is not sent:
    counted as skipped_nothing_to_check. Request k for an answer is sent with seed + k; it is asked
    again only while short, max_attempts times at most.

    Returns ({answer: [its accepted wordings]}, report: requested, accepted, rejected by reason,
    skipped_nothing_to_check, attempts); accepted + sum(rejected) == replies.
    """
    keys = {_normalise(p["answer"]): p["key"] for p in asked if p.get("key")}
    first = {}
    for pair in pairs:
        first.setdefault(pair["answer"], pair["question"])
    variants, skipped = {}, 0
    rejected = dict.fromkeys(ANSWER_REJECT_REASONS, 0)
    attempts = accepted = 0
    for index, (answer, question) in enumerate(first.items(), 1):
        key = keys.get(_normalise(answer))
        if not checkable(answer, key):
            skipped += 1
            log(f"answer {index}/{len(first)}: skipped, nothing to check a wording against: {_excerpt(answer)}")
            continue
        messages = answer_messages(question, answer)
        written = variants[answer] = []
        seen = {_normalise(answer)}
        tries = 0
        while len(written) < per_pair and tries < max_attempts:
            reply = ask(messages, seed + tries)
            tries += 1
            reason = judge_answer_variant(reply, question, answer, key, seen)
            if reason is None:
                written.append(reply.text.strip())
                seen.add(_normalise(reply.text))
            else:
                rejected[reason] += 1
            log(f"answer {index}/{len(first)}: {'accepted' if reason is None else f'rejected ({reason})'}: "
                f"{_excerpt(reply.text)} for {_excerpt(answer)}")
        attempts += tries
        accepted += len(written)
    return {answer: written for answer, written in variants.items() if written}, {
        "requested": per_pair * (len(first) - skipped), "accepted": accepted, "rejected": rejected,
        "skipped_nothing_to_check": skipped, "attempts": attempts,
        "transport": getattr(ask, "transport", "custom"), "model": getattr(ask, "model_name", None)}


# --- transports ------------------------------------------------------------------------------

class LocalChat:
    """ask() through a transformers model and its chat template, in this process.

    temperature 0 decodes greedily; above 0 it samples with plain temperature (top-k and top-p off,
    OpenAI's defaults, so a model's generation_config cannot change the sampling unseen), after
    torch.manual_seed(seed): the same seed, model and device give the same reply.
    """
    transport = "local"

    def __init__(self, model, tokenizer, model_name, max_new_tokens, temperature):
        if tokenizer.chat_template is None:
            raise ValueError(f"model {model_name!r} has no chat template: the llm backend needs an "
                             "instruct (chat) model")
        self.model, self.tokenizer, self.model_name = model, tokenizer, model_name
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        eos = model.generation_config.eos_token_id
        self.stop_ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
        self.pad_id = tokenizer.eos_token_id if tokenizer.pad_token_id is None else tokenizer.pad_token_id

    @torch.no_grad()
    def __call__(self, messages, seed):
        inputs = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(self.model.device)
        sampling = (dict(do_sample=True, temperature=self.temperature, top_k=0, top_p=1.0)
                    if self.temperature > 0 else dict(do_sample=False))
        torch.manual_seed(seed)
        output = self.model.generate(
            **inputs, max_new_tokens=self.max_new_tokens, pad_token_id=self.pad_id, **sampling)
        new_ids = output[0, inputs["input_ids"].shape[1]:].tolist()
        cut_off = not new_ids or new_ids[-1] not in self.stop_ids
        return Reply(self.tokenizer.decode(new_ids, skip_special_tokens=True), cut_off)


class HttpChat:
    """ask() through an OpenAI-compatible POST {base_url}/chat/completions.

    The API key is read from the environment variable named api_key_env at each request and sent
    only as `Authorization: Bearer`; without it no Authorization header is sent (local servers need
    none). seed and temperature go in the body; whether the server honours the seed is up to it.
    """
    transport = "http"

    def __init__(self, base_url, model_name, api_key_env, timeout, max_new_tokens, temperature):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model_name, self.api_key_env, self.timeout = model_name, api_key_env, timeout
        self.max_new_tokens, self.temperature = max_new_tokens, temperature

    def __call__(self, messages, seed):
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        body = {"model": self.model_name, "messages": messages, "seed": seed,
                "temperature": self.temperature, "max_tokens": self.max_new_tokens}
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode("utf-8"),
                                         headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            excerpt = _redact(e.read(300).decode("utf-8", "replace"), key)
            hint = ""
            if e.code in (401, 403) and not key:
                hint = f" (no API key was sent: environment variable {self.api_key_env or '-'} is not set)"
            raise TransportError(f"{self.url} answered HTTP {e.code} {e.reason}{hint}: {excerpt}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, TimeoutError):
                raise TransportError(f"no reply from {self.url} within {self.timeout} s") from None
            raise TransportError(f"cannot reach {self.url}: {reason}. Is the server running, and is "
                                 "generate_dataset.llm_base_url right?") from None
        return _parse_completion(raw, self.url, key)


def _parse_completion(raw, url, key):
    """Reply from an OpenAI chat-completions response body; TransportError if it is not one."""
    try:
        data = json.loads(raw)
        choice = data["choices"][0]
        text = choice["message"]["content"] or ""
        if not isinstance(text, str):
            raise TypeError("content is not a string")
    except (ValueError, LookupError, TypeError, AttributeError) as e:
        excerpt = _redact(raw[:300].decode("utf-8", "replace"), key)
        raise TransportError(
            f"{url} did not answer with an OpenAI chat completion ({e}): {excerpt}") from None
    return Reply(text, choice.get("finish_reason") == "length")


def _redact(text, key):
    """Remove the API key from text quoted in an error (a server may echo the request back)."""
    return text.replace(key, "***") if key else text
