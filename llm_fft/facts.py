"""The facts source (data/facts.yaml): the facts and the questions no fact answers, checked.

Only generate_dataset reads it, so an edit here reruns generate_dataset alone.
"""

import difflib
from pathlib import Path

import yaml

from llm_fft.formats import DatasetError
from llm_fft.prompts import ANSWER_MARK, QUESTION_MARK
from llm_fft.text import same_question, states


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
    for key in facts:  # a misspelt list (unkown:) would silently leave its questions out
        if key not in TOP_LEVEL_KEYS:
            close = difflib.get_close_matches(str(key), TOP_LEVEL_KEYS, n=1)
            problems.append(f"{path}: unknown key {key!r} ({f'did you mean {close[0]!r}? ' if close else ''}"
                            f"the file holds {', '.join(TOP_LEVEL_KEYS)})")
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
    problems += _asked_twice(path, facts["facts"])
    if problems:
        raise DatasetError("\n".join(problems))
    return checked


# answer and key are strings; the rest are lists of strings (only questions is required).
FACT_KEYS = ("answer", "key", "answers", "statements", "questions", "dev", "held_out")
ROLES = {"questions": "a training", "dev": "a dev", "held_out": "a held_out"}


def _asked_twice(path, facts):
    """A question (compared by text.same_question: case, spaces and a final ? do not count) asked twice in the file, as two roles
    or by two facts: a dev or held-out question that is also trained on, in this fact or another,
    would score a memorised string as a learned fact, and a training question written twice would
    be paired with two answers (two facts', or one fact's answer variants in turn)."""
    seen, problems = {}, []
    for i, fact in enumerate(facts):
        for name in ROLES:
            questions = fact.get(name) if isinstance(fact, dict) else None
            for question in questions if isinstance(questions, list) else []:
                if not isinstance(question, str) or not question.strip():
                    continue  # reported with the fact
                earlier = seen.get(same_question(question))
                if earlier is None:
                    seen[same_question(question)] = (i, name)
                else:
                    problems.append(f"{path}: facts[{i}]: {ROLES[name][2:]} question {question.strip()!r} is also "
                                    f"{ROLES[earlier[1]]} question of facts[{earlier[0]}]")
    return problems


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
        if key and (missing := [s for s in sentences if not states(s, key)]):
            problems.append(f"key {key!r} does not appear in {name} {missing[0]!r}")
    return problems


UNKNOWN_LISTS = ("unknown", "unknown_dev", "unknown_train")
TOP_LEVEL_KEYS = ("subject", "facts", *UNKNOWN_LISTS)


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
    seen = {same_question(q): (f"a {'training' if name == 'questions' else name} question of facts[{i}]", answered)
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
            if problem is None and (earlier := seen.get(same_question(question))):
                problem = f"{question.strip()!r} is also {earlier[0]}: {earlier[1]}"
            if problem:
                problems.append(f"{path}: {name}[{i}]: {problem}")
            else:
                seen[same_question(question)] = (f"{name}[{i}]", "ask it once, in one list")
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


def _excerpt(text, width=40):
    text = " ".join(text.split())
    return repr(text if len(text) <= width else text[:width] + "…")
