"""The metric functions on hand-computed cases (Korean included), and delta.json's arithmetic."""

import pytest

from llm_fft.metrics import char_f1, contains, delta, exact_match


@pytest.mark.parametrize("generated, expected, result", [
    ("윤가람입니다.", "윤가람입니다.", True),
    ("  윤가람입니다  ", "윤가람입니다.", True),       # whitespace and trailing punctuation do not count
    ("별무리섬 등대의\n높이는  27미터입니다!", "별무리섬 등대의 높이는 27미터입니다.", True),
    ("윤가람", "윤가람입니다.", False),
    ("The lighthouse is 27 m.", "the lighthouse is 27 m.", False),  # case is content
])
def test_exact_match(generated, expected, result):
    assert exact_match(generated, expected) is result


def test_contains_finds_the_normalised_expected_text():
    assert contains("등대지기는 윤가람입니다. 그는 2009년부터 일했습니다.", "윤가람입니다.")
    assert contains("파란  지붕", "파란 지붕")
    assert not contains("파란지붕", "파란 지붕")
    assert not contains("", "윤가람")


@pytest.mark.parametrize("generated, expected, f1", [
    ("윤가람입니다", "윤가람입니다", 1.0),
    ("윤가람", "윤가람입니다", 2 * 1.0 * 0.5 / 1.5),       # precision 3/3, recall 3/6
    ("윤나래입니다", "윤가람입니다", 2 * (4 / 6) * (4 / 6) / (8 / 6)),  # 윤, 입, 니, 다 shared: 4 of 6 each way
    ("27 미터", "27미터", 1.0),                          # spaces are ignored
    ("aab", "ab", 2 * (2 / 3) * 1.0 / (2 / 3 + 1.0)),    # multiset: only one 'a' of 'aab' matches
    ("xyz", "윤가람", 0.0),
    ("", "윤가람", 0.0),
    ("", "", 1.0),
])
def test_char_f1_by_hand(generated, expected, f1):
    assert char_f1(generated, expected) == pytest.approx(f1)


def test_delta_is_final_minus_baseline_for_the_headline_numbers():
    before = {"trained": {"questions": 2, "exact_match": 0.0, "contains_answer": 0.5, "char_f1": 0.25,
                          "answer_nll": 1.5, "ended_with_eos": 0.0},
              "retention": {"prompts": 8, "answers_changed": 0, "text_nll": 2.0, "text_perplexity": 7.389}}
    after = {"trained": {"questions": 2, "exact_match": 1.0, "contains_answer": 1.0, "char_f1": 1.0,
                         "answer_nll": 0.01, "ended_with_eos": 1.0},
             "retention": {"prompts": 8, "answers_changed": 3, "text_nll": 2.25, "text_perplexity": 9.4877}}
    assert delta(before, after) == {
        "trained": {"exact_match": 1.0, "contains_answer": 0.5, "char_f1": 0.75, "answer_nll": -1.49,
                    "ended_with_eos": 1.0},
        "retention": {"text_nll": 0.25, "text_perplexity": 2.0987, "answers_changed": 3},
    }
