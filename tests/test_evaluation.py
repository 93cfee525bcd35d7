"""The metric functions on hand-computed cases (Korean included), delta.json's arithmetic, the
unknown-question probe's scoring (no model) and the answer tables read back."""

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from llm_fft import evaluation
from llm_fft.evaluation import EVAL_SPEC, evaluate_unknown
from llm_fft.metrics import abstains, char_f1, contains, delta, exact_match, invented, read_answers, write_results
from llm_fft.params import problems_in_section

PARAMS_FILE = Path(__file__).resolve().parents[1] / "params.yaml"
PHRASES = yaml.safe_load(PARAMS_FILE.read_text(encoding="utf-8"))["evaluate"]["abstain_phrases"]


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


@pytest.mark.parametrize("generated, abstained", [
    ("잘 모르겠습니다.", True),
    ("그 정보는 알 수 없습니다", True),
    ("별무리섬의 면적에 대한 정보가 없습니다.", True),
    ("I Don't Know.", True),                        # casefolded
    ("I  do not\nknow", True),                      # whitespace normalised
    ("Sorry, I'm NOT SURE about that.", True),
    ("별무리섬의 면적은 12제곱킬로미터입니다.", False),  # an answer, made up
    ("윤가람입니다.", False),
    ("", False),
])
def test_abstains_with_the_default_phrases(generated, abstained):
    assert abstains(generated, PHRASES) is abstained


def test_invented_is_any_answer_that_is_neither_empty_nor_a_refusal():
    assert invented("12제곱킬로미터입니다.", abstained=False)
    assert not invented("모르겠습니다.", abstained=True)
    assert not invented("", abstained=False) and not invented(" . ", abstained=False)  # said nothing


def test_unknown_set_is_answered_like_the_others_and_counted_abstained_or_invented(monkeypatch):
    calls = []

    def canned(model, tokenizer, records, batch_size, max_new_tokens, device, stop, stop_texts):
        calls.append((batch_size, max_new_tokens, stop, stop_texts))
        texts = ["모르겠습니다.", "윤가람입니다.", "", "12제곱킬로미터입니다."]
        return [{"text": t, "generated_tokens": 2 * i + 1, "ended_with_eos": bool(i % 2)} for i, t in enumerate(texts)]

    monkeypatch.setattr(evaluation, "answer_questions", canned)
    records = [{"id": i, "question": f"Q{i}?", "prompt": f"Q{i}?", "q_ids": [1, 2]} for i in range(4)]
    metrics, table = evaluate_unknown(None, None, records, 8, 40, [0], "cpu", ["<|question|>"], PHRASES)
    assert calls == [(8, 40, [0], ["<|question|>"])]  # the generation limit and stops it was given
    assert metrics == {"questions": 4, "abstained": 0.25, "invented": 0.5, "mean_generated_tokens": 4.0}
    assert list(table["set"]) == ["unknown"] * 4 and list(table["expected"]) == [""] * 4
    assert list(table["abstained"]) == [True, False, False, False]
    assert "answer_nll" not in table  # nothing to score a loss on


def test_abstain_phrases_must_be_a_non_empty_list_of_non_empty_strings():
    params = yaml.safe_load(PARAMS_FILE.read_text(encoding="utf-8"))
    assert problems_in_section(params, "evaluate", EVAL_SPEC) == []
    for bad in ([], ["모르", ""], "모르", ["모르", 3]):
        params["evaluate"]["abstain_phrases"] = bad
        assert [p.split(" = ")[0] for p in problems_in_section(params, "evaluate", EVAL_SPEC)] == [
            "params.yaml: evaluate.abstain_phrases"], bad


def test_answer_tables_read_back_with_the_abstained_column(tmp_path):
    table = pd.concat([
        pd.DataFrame({"set": "trained", "id": [0], "question": ["Q?"], "expected": ["A."], "key_fact": [""],
                      "generated": ["A."], "exact_match": [True], "char_f1": [1.0], "answer_nll": [0.12346]}),
        pd.DataFrame({"set": "unknown", "id": [0, 1], "question": ["U?", "V?"], "expected": "", "key_fact": "",
                      "generated": ["모릅니다.", ""], "abstained": [True, False]}),
    ], ignore_index=True)
    write_results({}, table, tmp_path / "m.json", tmp_path / "a.csv")
    read = read_answers(tmp_path / "a.csv")
    assert list(read["abstained"]) == [None, True, False]  # empty: not scored for that set
    assert list(read["exact_match"]) == [True, None, None]
    assert list(read["generated"]) == ["A.", "모릅니다.", ""] and list(read["answer_nll"][:1]) == [0.1235]


def test_another_trained_answer_of_the_same_fact_counts_for_exact_match_any_answer(monkeypatch):
    """exact_match is the question's own answer; exact_match_any_answer also accepts, word for word,
    another answer trained for the same fact, never one of another fact."""
    texts = ["주민은 312명입니다.", "섬에 312명이 삽니다.", "주민은 312명입니다.", "등대지기는 윤가람입니다."]
    monkeypatch.setattr(evaluation, "answer_questions", lambda *args: [
        {"text": t, "generated_tokens": 3, "ended_with_eos": True} for t in texts])
    monkeypatch.setattr(evaluation, "answer_nll", lambda *args: ([0.1] * 4, 0.4, 4))
    expected = ["주민은 312명입니다.", "주민은 312명입니다.", "섬에 312명이 삽니다.", "섬에 312명이 삽니다."]
    records = [{"id": i, "question": f"Q{i}?", "answer": a, "q_ids": [1]} for i, a in enumerate(expected)]
    accepted = evaluation.accepted_answers([{"answers": ["주민은 312명입니다.", "섬에 312명이 삽니다."]},
                                            {"answers": ["등대지기는 윤가람입니다.", "윤가람이 지킵니다."]}])
    tokenizer = SimpleNamespace(pad_token_id=0)
    metrics, table = evaluation.evaluate_questions(None, tokenizer, records, "trained", 8, 40, [0], "cpu", (), accepted)
    assert list(table["exact_match"]) == [True, False, False, False]
    assert list(table["exact_match_any_answer"]) == [True, True, True, False]  # the last: another fact's answer
    assert (metrics["exact_match"], metrics["exact_match_any_answer"]) == (0.25, 0.75)
    # Without variants (the file and llm backends) the two are the same number.
    metrics, _ = evaluation.evaluate_questions(None, tokenizer, records, "trained", 8, 40, [0], "cpu")
    assert metrics["exact_match_any_answer"] == metrics["exact_match"] == 0.25


def test_interpolate_judges_a_keyless_dev_question_by_the_whole_answer(monkeypatch):
    """Your own dev pairs may have no key (file backend): such an answer counts for the dev score only
    if it holds the whole expected answer; one with a key, if it states the key."""
    from stages import interpolate
    texts = ["등대는 27미터예요.", "달빛제과예요.", "달빛제과입니다."]
    monkeypatch.setattr(interpolate, "answer_questions", lambda *args: [
        {"text": t, "generated_tokens": 3, "ended_with_eos": True} for t in texts])
    monkeypatch.setattr(interpolate, "answer_nll", lambda *args: ([0.1] * 3, 0.3, 3))
    dev = [{"question": "높이?", "answer": "27미터입니다.", "key": "27미터", "q_ids": [1]},
           {"question": "이름?", "answer": "달빛제과입니다.", "q_ids": [1]},   # keyless, answer not whole
           {"question": "이름은?", "answer": "달빛제과입니다.", "q_ids": [1]}]  # keyless, answer whole
    params = {"evaluate": {"batch_size": 8}, "prompt": {"style": "custom_tokens", "system": "", "markers": "text"}}
    tokenizer = SimpleNamespace(pad_token_id=0, eos_token_id=0)
    numbers = interpolate.score(None, tokenizer, dev, [], params, 40, "cpu")
    assert numbers == {"dev_states_key_fact": round(2 / 3, 4), "dev_answer_nll": 0.1}


def test_a_keyless_question_in_a_keyed_set_is_judged_by_the_whole_answer(monkeypatch):
    """A held-out set mixing keyed questions with keyless ones (a language model's paraphrases of your
    training questions) is scored on every question, the keyless by the whole expected answer; a set
    with no key at all has no states_key_fact."""
    texts = ["등대는 27미터예요.", "달빛제과예요.", "달빛제과입니다.", "모릅니다."]
    monkeypatch.setattr(evaluation, "answer_questions", lambda *args: [
        {"text": t, "generated_tokens": 3, "ended_with_eos": True} for t in texts])
    monkeypatch.setattr(evaluation, "answer_nll", lambda *args: ([0.1] * 4, 0.4, 4))
    records = [{"id": "h1", "question": "높이?", "answer": "27미터입니다.", "key": "27미터", "q_ids": [1]},
               {"id": "h2", "question": "이름?", "answer": "달빛제과입니다.", "q_ids": [1]},
               {"id": "h3", "question": "이름은?", "answer": "달빛제과입니다.", "q_ids": [1]},
               {"id": "h4", "question": "몇 명?", "answer": "312명입니다.", "key": "312명", "q_ids": [1]}]
    tokenizer = SimpleNamespace(pad_token_id=0)
    metrics, table = evaluation.evaluate_questions(None, tokenizer, records, "heldout", 8, 40, [0], "cpu")
    assert list(table["states_key_fact"]) == [True, False, True, False]
    assert metrics["states_key_fact"] == 0.5
    keyless = [{k: v for k, v in r.items() if k != "key"} for r in records]
    metrics, table = evaluation.evaluate_questions(None, tokenizer, keyless, "heldout", 8, 40, [0], "cpu")
    assert "states_key_fact" not in metrics and table["states_key_fact"].isna().all()
