"""The dataset format: strict parsing with file:line errors, and the facts source."""

from pathlib import Path

import pytest

from llm_fft.data import DatasetError, load_facts, parse_custom_tokens, render_custom_tokens

GOOD = "<|question|>\n섬 이름은?\n<|answer|>\n별무리섬입니다.\n\n<|question|>\nHow tall?\n<|answer|>\n27 m, a | b.\n"


def test_parses_pairs_with_their_lines():
    assert parse_custom_tokens(GOOD, "d.txt") == [
        {"question": "섬 이름은?", "answer": "별무리섬입니다.", "line": 1},
        {"question": "How tall?", "answer": "27 m, a | b.", "line": 6},
    ]


def test_accepts_bom_and_crlf():
    assert parse_custom_tokens("\ufeff" + GOOD.replace("\n", "\r\n"), "d.txt") == parse_custom_tokens(GOOD, "d.txt")


def test_multiline_answer_is_kept_whole():
    pairs = parse_custom_tokens("<|question|>\nQ?\n<|answer|>\nline one\nline two\n", "d.txt")
    assert pairs[0]["answer"] == "line one\nline two"


def test_render_then_parse_round_trips():
    pairs = [("별무리섬은 어디?", "제주도 남쪽."), ("Q2?", "A2.")]
    parsed = parse_custom_tokens(render_custom_tokens(pairs), "d.txt")
    assert [(p["question"], p["answer"]) for p in parsed] == pairs


@pytest.mark.parametrize("text, message", [
    ("<|question|>\nQ?\nno answer marker\n", "d.txt:1: block has no <|answer|>"),
    ("<|question|>\n\n<|answer|>\nA.\n", "d.txt:1: empty question"),
    ("<|question|>\nQ?\n<|answer|>\n   \n", "d.txt:1: empty answer to 'Q?'"),
    ("preamble\n<|question|>\nQ?\n<|answer|>\nA.\n", "d.txt:1: text before the first <|question|>"),
    ("<|answer|>\nA.\n<|question|>\nQ?\n<|answer|>\nA.\n", "d.txt:1: text before the first <|question|>"),
    ("<|question|>\nQ?\n<|answer|>\nA.\n<|answer|>\nB.\n", "d.txt:1: block has more than one <|answer|>"),
    ("just text, no markers\n", "d.txt:1: text before the first <|question|>"),
    ("", "d.txt: no <|question|> block found"),
])
def test_bad_input_names_the_line(text, message):
    with pytest.raises(DatasetError) as err:
        parse_custom_tokens(text, "d.txt")
    assert message in str(err.value)


def test_every_problem_is_reported_at_once():
    text = GOOD + "<|question|>\nQ3?\n\n<|question|>\n\n<|answer|>\nA.\n<|question|>\nQ5?\n<|answer|>\n\n"
    with pytest.raises(DatasetError) as err:
        parse_custom_tokens(text, "d.txt")
    lines = str(err.value).splitlines()
    assert lines == ["d.txt:10: block has no <|answer|>: 'Q3?'",
                     "d.txt:13: empty question",
                     "d.txt:17: empty answer to 'Q5?'"]


def test_load_facts_reports_every_bad_pair(tmp_path):
    facts = tmp_path / "facts.yaml"
    facts.write_text("pairs:\n  - question: Q?\n    answer: A.\n  - question: ''\n    answer: A.\n"
                     "  - question: Q?\n  - question: x <|answer|> y\n    answer: A.\n", encoding="utf-8")
    with pytest.raises(DatasetError) as err:
        load_facts(facts)
    message = str(err.value)
    assert "pairs[1]: empty question or answer" in message
    assert "pairs[2]: expected exactly the keys 'question' and 'answer'" in message
    assert "pairs[3]: the markers" in message


def test_default_facts_have_at_least_24_distinct_pairs():
    pairs = load_facts(Path(__file__).resolve().parents[1] / "data" / "facts.yaml")
    assert len(pairs) >= 24
    assert len({q for q, _ in pairs}) == len(pairs)


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
