"""The facts source, the params loader and atomic writes."""

from pathlib import Path

import pytest

from llm_fft.data import DatasetError, load_facts

def test_load_facts_reports_every_bad_fact(tmp_path):
    facts = tmp_path / "facts.yaml"
    facts.write_text(
        "facts:\n"
        "  - {answer: 'A.', questions: ['Q?']}\n"                          # fine: key and held_out optional
        "  - {answer: '', questions: ['Q?']}\n"
        "  - {answer: 'A.'}\n"
        "  - {answer: 'x <|answer|> y', questions: ['Q?']}\n"
        "  - {answer: '27미터입니다.', key: '28미터', questions: ['Q?'], held_out: ['H?']}\n"
        "  - {answer: 'A.', questions: ['Q?'], held_out: ['H?']}\n"
        "  - {answer: 'A.', key: A, questions: ['Q?'], held_out: ['Q?']}\n", encoding="utf-8")
    with pytest.raises(DatasetError) as err:
        load_facts(facts)
    assert str(err.value).splitlines() == [
        f"{facts}: facts[1]: empty answer",
        f"{facts}: facts[2]: expected the keys answer, questions and optionally key, held_out; got \"{{'answer': 'A.'}}\"",
        f"{facts}: facts[3]: the markers <|question|> / <|answer|> cannot appear in text",
        f"{facts}: facts[4]: key '28미터' does not appear in the answer '27미터입니다.'",
        f"{facts}: facts[5]: held_out questions need a key (the short fact an answer must state)",
        f"{facts}: facts[6]: a held_out question is also a training question",
    ]


def test_default_facts_have_two_phrasings_a_held_out_question_and_a_key_each():
    facts = load_facts(Path(__file__).resolve().parents[1] / "data" / "facts.yaml")
    assert len(facts) >= 24
    questions = [q for f in facts for q in f["questions"] + f["held_out"]]
    assert len(set(questions)) == len(questions)  # no phrasing twice, held-out never trained on
    assert all(len(f["questions"]) >= 2 and f["held_out"] and f["key"] in f["answer"] for f in facts)


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
