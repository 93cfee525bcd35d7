"""The one text normaliser, which every comparison of answers and continuations goes through, the
one rule of two questions being the same (same_question), and the one rule of a key fact stated
(states)."""

import re


def normalize(text):
    """Whitespace collapsed, trailing sentence punctuation (and a space before it) dropped:
    `서울 입니다.` == `서울 입니다 .` == `서울 입니다`."""
    return " ".join(text.split()).rstrip(".!?。？！． ")


# Full-width ASCII (！ to ～) and the ideographic space, as their ASCII forms; nothing else is folded
# (NFKC would also make x² x2 and Ⅳ IV, different questions).
_HALF_WIDTH = {**{code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)}, 0x3000: 0x20}


def same_question(text):
    """What two questions that are one question share: normalised, lower-cased, full-width letters and
    punctuation as ASCII, so `Who founded Zorp？` and `who founded  zorp?` are one question. A training
    question and an evaluation question that differ only so would test memory, not the fact."""
    return normalize(text.translate(_HALF_WIDTH)).lower()


def number_guards(key):
    """Regex lookarounds that keep key from matching inside a longer number: a key that starts with
    a digit may not follow one (nor a digit and . or ,), a key that ends with one may not precede one."""
    before = r"(?<!\d)(?<!\d[.,])" if key[:1].isdigit() else ""
    after = r"(?!\d)(?![.,]\d)" if key[-1:].isdigit() else ""
    return before, after


def states(text, key):
    """Whether key appears in text (compared normalised) and not as part of a longer number: 12명 is
    not stated by 312명, nor 8초 by 18초 or 8.8초. Anywhere else it is found inside a word, as
    Korean particles attach to it (서울은). The one rule of a key fact: in the scores, and in the
    checks that a key appears in its answer."""
    text, key = normalize(text), normalize(key)
    before, after = number_guards(key)
    return re.search(before + re.escape(key) + after, text) is not None
