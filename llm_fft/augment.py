"""Augmentation for a dataset file of your own, with no model: rule-based rewordings of each question's
ending (generate_dataset.rewordings) and each answer as a plain-text statement
(generate_dataset.statements_from_answers).

A fact seen in one wording is hard to retrieve by another (llm_fft.coverage); the embedded models cannot
write the missing phrasings themselves (issue #27), so these come from rules. Each rule rewrites only the
end of a question, in a closed set of Korean and English forms, and leaves the words that carry the fact
as they are.
"""

import difflib
import re

from llm_fft.text import normalize, same_question

HANGUL_FIRST, HANGUL_LAST = 0xAC00, 0xD7A3
SIMILARITY_LIMIT = 0.75  # a training question this similar to an evaluation question is too close


def _has_final_consonant(syllable):
    """Whether a Hangul syllable ends in a consonant (받침): 명 yes, 무 no; None for anything else."""
    code = ord(syllable)
    return (code - HANGUL_FIRST) % 28 != 0 if HANGUL_FIRST <= code <= HANGUL_LAST else None


def _korean_copula(stem):
    """A noun phrase asked about with a copula (…인가요? / …이에요? / …예요? / …입니까? / …이야? / …야?):
    the other forms of the same question."""
    final = _has_final_consonant(stem[-1])
    polite_casual = [] if final is None else [stem + ("이에요?" if final else "예요?"), stem + ("이야?" if final else "야?")]
    return [stem + "인가요?", *polite_casual, stem + "인지 알려 주세요.", stem + "인지 궁금해요."]


# (the ending, how the rest is reworded); the first ending that matches is used. Not …이야?, which
# cannot be split without a dictionary (고양이야? is 고양이 + 야).
KOREAN_ENDINGS = [
    ("인가요?", _korean_copula),
    ("입니까?", _korean_copula),
    ("이에요?", _korean_copula),
    ("예요?", _korean_copula),
    # a verb or an adjective (있나요?, 여나요?, 높나요?): only the casual …니? fits both (…는지 does not
    # fit an adjective: 높은지)
    ("나요?", lambda stem: [stem + "니?"]),
]

ENGLISH_QUESTION = re.compile(r"^(what|who|where|when|how much|how long|how old|how tall|how high)"
                              r"\s+(is|are|was|were)\s+(.+?)\s*\?$", re.IGNORECASE)
# "When was it built?", "What is it called?": a passive keeps its verb last (when it was built), so the
# rule, which moves only is/are/was/were, leaves such questions alone.
PARTICIPLE = re.compile(r"(ed|en|built|held|made|known|born|found|done|seen|sold|told|kept|left|run|set|put)$",
                        re.IGNORECASE)


def _english(question):
    """"What is X?" and its kind: "Tell me what X is.", "Do you know what X is?", "I'd like to know what X is."
    (and "What's X?")."""
    match = ENGLISH_QUESTION.match(question)
    if not match or PARTICIPLE.search(match.group(3)):
        return []
    wh, verb, rest = match.group(1).lower(), match.group(2).lower(), match.group(3)
    forms = [f"Tell me {wh} {rest} {verb}.", f"Do you know {wh} {rest} {verb}?", f"I'd like to know {wh} {rest} {verb}."]
    if verb == "is" and wh in ("what", "who", "where", "when"):
        forms.append(f"{match.group(1)}'s {rest}?")
    return forms


def rewordings(question):
    """The other wordings of a question's ending, in a fixed order (none when no rule applies)."""
    question = question.strip()
    for ending, reword in KOREAN_ENDINGS:
        if question.endswith(ending) and len(question) > len(ending):
            stem = question[:-len(ending)].rstrip()
            return [q for q in reword(stem) if same_question(q) != same_question(question)]
    return _english(question)


def _letters(text):
    return "".join(c for c in text if c.isalnum())


def too_close(question, evaluation, limit=SIMILARITY_LIMIT):
    """Whether a new training question is a near-copy of a dev, held-out or unknown question: character
    similarity (punctuation and spaces ignored) at or above limit, the rule data/facts.yaml is kept by."""
    return any(difflib.SequenceMatcher(None, _letters(question), _letters(q)).ratio() >= limit for q in evaluation)


def reword_pairs(pairs, per_pair, taken, evaluation):
    """Up to per_pair rewordings of each pair's question, each with the pair's answer. Dropped, and counted:
    a rewording that is already a question (taken: the training, dev, held-out and unknown questions) or
    that another pair made first, and one too close to an evaluation question (evaluation: the dev,
    held-out and unknown questions; training on a near-copy would test memory, not the fact).
    Returns (pairs, {accepted, rejected: {why: n}})."""
    seen = {same_question(q) for q in taken}
    added, rejected = [], {}
    for pair in pairs:
        for question in rewordings(pair["question"])[:per_pair]:
            why = ("already a question" if same_question(question) in seen
                   else "too close to a dev, held-out or unknown question" if too_close(question, evaluation) else None)
            if why:
                rejected[why] = rejected.get(why, 0) + 1
                continue
            seen.add(same_question(question))
            added.append({"question": question, "answer": pair["answer"]})
    no_rule = sum(not rewordings(p["question"]) for p in pairs)
    if no_rule:
        rejected["no rule for the question's ending"] = no_rule
    return added, {"accepted": len(added), "rejected": rejected}


def statements_from_answers(pairs):
    """Each distinct answer once, as plain text learned whole (like the facts file's statements)."""
    seen, statements = set(), []
    for pair in pairs:
        if normalize(pair["answer"]) not in seen:
            seen.add(normalize(pair["answer"]))
            statements.append({"text": pair["answer"]})
    return statements
