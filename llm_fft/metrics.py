"""Scoring answers, and the answer tables the scores are kept in.

Pure functions of text (no model): editing one reruns the evaluations and the report, not training.
Every comparison goes through llm_fft.text.normalize, and every answer table is read back through
read_answers, so the metrics, the delta and the report cannot disagree about what "the same" means.
"""

import json
import re
from collections import Counter

import pandas as pd

from llm_fft.files import write_atomically
from llm_fft.text import normalize, number_guards, states

# The numbers delta.json reports as final - baseline, per set.
HEADLINE = {
    "trained": ["exact_match", "exact_match_any_answer", "contains_answer", "char_f1", "answer_nll", "ended_with_eos"],
    "dev": ["exact_match", "states_key_fact", "right", "abstained", "wrong", "wrong_other_fact", "char_f1", "answer_nll",
            "ended_with_eos"],
    "heldout": ["exact_match", "states_key_fact", "right", "abstained", "wrong", "wrong_other_fact", "char_f1",
                "answer_nll", "ended_with_eos"],
    "retention": ["text_nll", "text_perplexity", "answers_changed"],
    "unknown": ["abstained", "invented"],
    "general": ["right"],
}
# The answer tables' True/False columns (empty = not scored for that set).
BOOL_COLUMNS = ("exact_match", "exact_match_any_answer", "contains_answer", "states_key_fact", "ended_with_eos",
                "changed", "abstained", "gated", "right")
NUMBER_COLUMNS = ("id", "char_f1", "generated_tokens", "answer_nll", "own_answer_nll")


def exact_match(generated, expected):
    return normalize(generated) == normalize(expected)


def contains(generated, expected):
    """Whether the (normalised) expected text appears in the generated text."""
    return normalize(expected) in normalize(generated)


def char_f1(generated, expected):
    """F1 over characters (whitespace ignored, counted as a multiset, like SQuAD's token F1).

    Korean does not split into words well (particles attach to nouns: 윤가람은 / 윤가람입니다),
    so characters measure partial overlap better than words.
    """
    got = Counter(c for c in normalize(generated) if not c.isspace())
    want = Counter(c for c in normalize(expected) if not c.isspace())
    if not got or not want:
        return float(got == want)
    overlap = sum((got & want).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / sum(got.values()), overlap / sum(want.values())
    return 2 * precision * recall / (precision + recall)


def answer_changed(before, after):
    """Whether fine-tuning changed an answer (retention prompts; the report's mark uses the same rule)."""
    return normalize(before) != normalize(after)


def abstains(generated, phrases):
    """Whether an answer says it does not know: it contains one of the phrases (evaluate.abstain_phrases),
    compared normalised and casefolded (모르겠습니다, I Don't know)."""
    text = normalize(generated).casefold()
    return any(normalize(phrase).casefold() in text for phrase in phrases)


def holds_key(generated, key):
    """Whether a general-knowledge probe's continuation states its key: casefolded, and a key in ASCII
    ("Au", "8", "Rome") must stand as a whole word, so that "8" is not found in "18"; a Korean key is
    found inside a word, since particles attach to it (서울은, 목성이다). Neither inside a longer number
    ("100" is not in "100,000"; text.states)."""
    text, key = normalize(generated).casefold(), normalize(key).casefold()
    if not key.isascii():
        return states(text, key)
    before, after = number_guards(key)
    return re.search(rf"(?<![0-9a-z]){before}{re.escape(key)}(?![0-9a-z]){after}", text) is not None


def key_fact(record):
    """What a right answer to a question must state: its key fact, or, for a question without one
    (your own, or a language model's paraphrase), the whole expected answer."""
    return record.get("key") or record["answer"]


def states_key_fact(generated, record):
    """The one rule of a right answer, in both evaluations, the gate and interpolate: the key fact
    appears in the answer, and not as part of a longer number (text.states)."""
    return states(generated, key_fact(record))


def verdict(generated, record, phrases):
    """right (states_key_fact), abstained (says it does not know: evaluate.abstain_phrases) or wrong
    (neither: something else, or nothing)."""
    if states_key_fact(generated, record):
        return "right"
    return "abstained" if abstains(generated, phrases) else "wrong"


def invented(generated, abstained):
    """Whether an answer to a question the data does not answer (the unknown set) invents something:
    it says something (not empty) and does not say it does not know. The report counts by the same rule."""
    return not abstained and bool(normalize(generated))


def delta(before, after):
    """final - baseline for the headline numbers, in the same nested layout (for delta.json)."""
    return {name: {k: round(after[name][k] - before[name][k], 4) for k in keys if k in after.get(name, {})}
            for name, keys in HEADLINE.items() if name in after and name in before}


def write_results(metrics, table, metrics_path, table_path):
    write_atomically(table_path, table.round({"answer_nll": 4, "char_f1": 4}).to_csv(index=False))
    write_atomically(metrics_path, json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")


def read_answers(path):
    """A table written by write_results, typed back: flags as True/False/None (not scored for that
    set), numbers as numbers, texts as texts (an empty answer stays "", not NaN)."""
    table = pd.read_csv(path, keep_default_na=False, dtype=str)
    for column in BOOL_COLUMNS:
        if column in table:
            table[column] = table[column].map({"True": True, "False": False, "": None})
    for column in NUMBER_COLUMNS:
        if column in table:
            table[column] = pd.to_numeric(table[column].replace("", None))
    return table
