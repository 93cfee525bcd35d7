"""The facts source, the params loader and atomic writes."""

import difflib
from pathlib import Path

import pytest

from llm_fft.data import DatasetError, load_facts


def test_load_facts_reports_every_bad_fact(tmp_path):
    facts = tmp_path / "facts.yaml"
    facts.write_text(
        "facts:\n"
        "  - {answer: 'A.', questions: ['Q?']}\n"                          # fine: the rest is optional
        "  - {answer: '', questions: ['Q?']}\n"
        "  - {answer: 'A.'}\n"
        "  - {answer: 'x <|answer|> y', questions: ['Q?']}\n"
        "  - {answer: '27미터입니다.', key: '28미터', questions: ['Q?'], held_out: ['H?']}\n"
        "  - {answer: 'A.', questions: ['Q?'], held_out: ['H?']}\n"
        "  - {answer: 'A.', key: A, questions: ['Q?'], held_out: ['Q?']}\n"
        "  - {answer: '27미터입니다.', key: 27미터, answers: ['높이는 27 m입니다.'], statements: ['등대는 높다.'],\n"
        "     questions: ['Q?'], dev: ['D?'], held_out: ['D?']}\n"
        "  - {answer: 'A.', key: A, questions: ['Q?'], dev: 'D?'}\n", encoding="utf-8")
    with pytest.raises(DatasetError) as err:
        load_facts(facts)
    assert str(err.value).splitlines() == [
        f"{facts}: facts[1]: empty answer",
        f"{facts}: facts[2]: expected the keys answer, questions and optionally key, answers, statements, dev, "
        f"held_out; got \"{{'answer': 'A.'}}\"",
        f"{facts}: facts[3]: the markers <|question|> / <|answer|> cannot appear in text",
        f"{facts}: facts[4]: key '28미터' does not appear in the answer '27미터입니다.'",
        f"{facts}: facts[5]: held_out and dev questions need a key (the short fact an answer must state)",
        f"{facts}: facts[6]: a held_out question is also a training question",
        f"{facts}: facts[7]: key '27미터' does not appear in answers '높이는 27 m입니다.'",
        f"{facts}: facts[7]: key '27미터' does not appear in statements '등대는 높다.'",
        f"{facts}: facts[7]: a held_out question is also a dev question",
        f"{facts}: facts[8]: dev must be a list of non-empty strings",
    ]


def similarity(a, b):
    """Character similarity of two questions, punctuation and spaces ignored (0 to 1)."""
    def letters(text):
        return "".join(c for c in text if c.isalnum())
    return difflib.SequenceMatcher(None, letters(a), letters(b)).ratio()


def test_default_facts_keep_training_dev_and_held_out_phrasings_apart():
    facts = load_facts(Path(__file__).resolve().parents[1] / "data" / "facts.yaml")
    assert len(facts) >= 24
    questions = [q for f in facts for q in f["questions"] + f["dev"] + f["held_out"]]
    assert len(set(questions)) == len(questions)  # no phrasing twice, held-out and dev never trained on
    for f in facts:
        assert len(f["questions"]) >= 2 and len(f["dev"]) == len(f["held_out"]) == 1
        assert all(f["key"] in text for text in [f["answer"], *f["answers"], *f["statements"]])
        # The new phrasings were written without the held-out ones; near-copies were dropped after.
        # The hand-written original pairs reach 0.85, so they are exempt from the bound.
        for question in f["questions"][2:] + f["dev"]:
            for test in f["held_out"] + [d for d in f["dev"] if d != question]:
                assert similarity(question, test) < 0.75, (question, test)


def test_params_read_exponent_floats_as_dvc_does(tmp_path):
    from llm_fft.params import load_params
    (tmp_path / "params.yaml").write_text("a: 1e-4\nb: 3.0e-4\nc: 2E+3\nd: 10\ne: 1e-4x\n")
    assert load_params(tmp_path / "params.yaml") == {"a": 1e-4, "b": 3e-4, "c": 2000.0, "d": 10, "e": "1e-4x"}


def test_write_atomically_replaces_whole_or_not_at_all(tmp_path):
    from llm_fft.files import write_atomically
    target = tmp_path / "out.json"
    write_atomically(target, "old\n")
    with pytest.raises(TypeError):
        write_atomically(target, None)  # fails while writing the temporary file
    assert target.read_text() == "old\n"
    write_atomically(target, "new\n")
    assert target.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary file left
