"""The metric functions on hand-computed cases (Korean included), delta.json's arithmetic, the
unknown-question probe's scoring (no model) and the answer tables read back."""

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import yaml

from llm_fft import evaluation
from llm_fft.evaluation import EVAL_SPEC, evaluate_unknown
from llm_fft.metrics import (
    abstains,
    char_f1,
    contains,
    delta,
    exact_match,
    holds_key,
    invented,
    read_answers,
    states_key_fact,
    write_results,
)
from llm_fft.model import ModelNotFound
from llm_fft.params import ParamsError, problems_in_section

PARAMS_FILE = Path(__file__).resolve().parents[1] / "params.yaml"
PHRASES = yaml.safe_load(PARAMS_FILE.read_text(encoding="utf-8"))["evaluate"]["abstain_phrases"]


@pytest.mark.parametrize("generated, expected, result", [
    ("윤가람입니다.", "윤가람입니다.", True),
    ("  윤가람입니다  ", "윤가람입니다.", True),       # whitespace and trailing punctuation do not count
    ("별무리섬 등대의\n높이는  27미터입니다!", "별무리섬 등대의 높이는 27미터입니다.", True),
    ("윤가람", "윤가람입니다.", False),
    ("The lighthouse is 27 m.", "the lighthouse is 27 m.", False),  # case is content
    ("윤가람입니다 .", "윤가람입니다", True),          # nor a space before the final punctuation
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


def canned_answers(texts, nll=0.5):
    return [{"text": t, "generated_tokens": 2 * i + 1, "ended_with_eos": bool(i % 2), "own_answer_nll": nll}
            for i, t in enumerate(texts)]


def test_unknown_set_is_counted_abstained_or_invented():
    answers = canned_answers(["모르겠습니다.", "윤가람입니다.", "", "12제곱킬로미터입니다."])
    records = [{"id": i, "question": f"Q{i}?", "prompt": f"Q{i}?", "q_ids": [1, 2]} for i in range(4)]
    metrics, table = evaluate_unknown(answers, records, "unknown", PHRASES)
    assert metrics == {"questions": 4, "abstained": 0.25, "invented": 0.5, "gated": 0.0, "mean_generated_tokens": 4.0}
    assert list(table["set"]) == ["unknown"] * 4 and list(table["expected"]) == [""] * 4
    assert list(table["abstained"]) == [True, False, False, False]
    assert "answer_nll" not in table  # nothing to score a loss on


def test_answer_set_scores_each_answer_by_the_models_own_nll_of_it(monkeypatch):
    """own_answer_nll is the teacher-forced NLL of the prompt + the answer as generated + EOS."""
    seen = []
    canned = SimpleNamespace(batch_size=8, answer=lambda *args: [
        {"text": "312명", "generated_tokens": 2, "ended_with_eos": True}])

    def nll(model, records, batch_size, pad_id, device, known=None):
        seen.extend(records)
        return [0.123456], 0.0, 1
    monkeypatch.setattr(evaluation, "answer_nll", nll)
    tokenizer = type("Tok", (), {"pad_token_id": 0, "eos_token_id": 9,
                                 "__call__": lambda self, text, add_special_tokens: {"input_ids": [len(text)]}})()
    prompt = {"style": "custom_tokens", "system": "", "markers": "text"}
    answers = evaluation.answer_set(None, tokenizer, [{"question": "Q?", "q_ids": [1, 2]}], prompt, canned, "cpu")
    assert answers[0]["own_answer_nll"] == 0.1235
    assert seen == [{"input_ids": [1, 2, 4, 9], "labels": [-100, -100, 4, 9]}]


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


def test_another_trained_answer_of_the_same_fact_counts_for_exact_match_any_answer():
    """exact_match is the question's own answer; exact_match_any_answer also accepts, word for word,
    another answer trained for the same fact, never one of another fact."""
    answers = canned_answers(["주민은 312명입니다.", "섬에 312명이 삽니다.", "주민은 312명입니다.", "등대지기는 윤가람입니다."])
    expected = ["주민은 312명입니다.", "주민은 312명입니다.", "섬에 312명이 삽니다.", "섬에 312명이 삽니다."]
    records = [{"id": i, "question": f"Q{i}?", "answer": a, "q_ids": [1]} for i, a in enumerate(expected)]
    accepted = evaluation.accepted_answers([{"answers": ["주민은 312명입니다.", "섬에 312명이 삽니다."]},
                                            {"answers": ["등대지기는 윤가람입니다.", "윤가람이 지킵니다."]}])
    nll = ([0.1] * 4, 0.4, 4)
    metrics, table = evaluation.evaluate_questions(answers, records, "trained", PHRASES, nll, accepted)
    assert list(table["exact_match"]) == [True, False, False, False]
    assert list(table["exact_match_any_answer"]) == [True, True, True, False]  # the last: another fact's answer
    assert (metrics["exact_match"], metrics["exact_match_any_answer"]) == (0.25, 0.75)
    # Without variants (the file and llm backends) the two are the same number.
    metrics, _ = evaluation.evaluate_questions(answers, records, "trained", PHRASES, nll)
    assert metrics["exact_match_any_answer"] == metrics["exact_match"] == 0.25


def test_interpolate_judges_a_keyless_dev_question_by_the_whole_answer(monkeypatch):
    """Your own dev pairs may have no key (file backend): such an answer counts for the dev score only
    if it holds the whole expected answer; one with a key, if it states the key."""
    from stages import interpolate
    texts = ["등대는 27미터예요.", "달빛제과예요.", "달빛제과입니다."]
    canned = SimpleNamespace(batch_size=8, answer=lambda *args: [
        {"text": t, "generated_tokens": 3, "ended_with_eos": True} for t in texts])
    monkeypatch.setattr(interpolate, "answer_nll", lambda *args: ([0.1] * 3, 0.3, 3))
    dev = [{"question": "높이?", "answer": "27미터입니다.", "key": "27미터", "q_ids": [1]},
           {"question": "이름?", "answer": "달빛제과입니다.", "q_ids": [1]},   # keyless, answer not whole
           {"question": "이름은?", "answer": "달빛제과입니다.", "q_ids": [1]}]  # keyless, answer whole
    tokenizer = SimpleNamespace(pad_token_id=0, eos_token_id=0)
    numbers = interpolate.score(None, tokenizer, dev, [], canned, "cpu")
    assert numbers == {"dev_states_key_fact": round(2 / 3, 4), "dev_answer_nll": 0.1}


def test_tied_weights_go_to_the_smallest_or_to_the_lowest_dev_answer_nll():
    """A small dev set ties often (issue #27: 0.8 and 0.7 at 6 of 8): the tie-break decides."""
    from stages.interpolate import choose
    curve = [{"weight": 1.0, "dev_states_key_fact": 0.625, "dev_answer_nll": 0.10},
             {"weight": 0.9, "dev_states_key_fact": 0.75, "dev_answer_nll": 0.12},
             {"weight": 0.8, "dev_states_key_fact": 0.75, "dev_answer_nll": 0.20},
             {"weight": 0.7, "dev_states_key_fact": 0.75, "dev_answer_nll": 0.35}]
    assert choose(curve, 0.0, "smallest_weight") == (0.7, [0.9, 0.8, 0.7])
    assert choose(curve, 0.0, "lowest_dev_answer_nll") == (0.9, [0.9, 0.8, 0.7])
    assert choose(curve, 0.125, "lowest_dev_answer_nll") == (1.0, [1.0, 0.9, 0.8, 0.7])  # 1.0 within tolerance
    assert choose(curve[:1], 0.0, "smallest_weight") == (1.0, [1.0])


def test_a_keyless_question_in_a_keyed_set_is_judged_by_the_whole_answer():
    """A held-out set mixing keyed questions with keyless ones (a language model's paraphrases of your
    training questions) is scored on every question, the keyless by the whole expected answer; a set
    with no key at all has no states_key_fact. Every answer is right, abstained or wrong."""
    answers = canned_answers(["등대는 27미터예요.", "달빛제과예요.", "달빛제과입니다.", "모릅니다."])
    records = [{"id": "h1", "question": "높이?", "answer": "27미터입니다.", "key": "27미터", "q_ids": [1]},
               {"id": "h2", "question": "이름?", "answer": "달빛제과입니다.", "q_ids": [1]},
               {"id": "h3", "question": "이름은?", "answer": "달빛제과입니다.", "q_ids": [1]},
               {"id": "h4", "question": "몇 명?", "answer": "312명입니다.", "key": "312명", "q_ids": [1]}]
    nll = ([0.1] * 4, 0.4, 4)
    metrics, table = evaluation.evaluate_questions(answers, records, "heldout", PHRASES, nll)
    assert list(table["states_key_fact"]) == [True, False, True, False]
    assert list(table["verdict"]) == ["right", "wrong", "right", "abstained"]
    assert (metrics["states_key_fact"], metrics["right"], metrics["abstained"], metrics["wrong"]) == (0.5, 0.5, 0.25, 0.25)
    assert metrics["wrong_other_fact"] == 0.0
    # 312명 asked, 27미터 answered: wrong, and it states another fact's key.
    other = canned_answers(["등대는 27미터예요.", "달빛제과예요.", "달빛제과입니다.", "27미터입니다."])
    metrics, _ = evaluation.evaluate_questions(other, records, "heldout", PHRASES, nll)
    assert (metrics["wrong"], metrics["wrong_other_fact"]) == (0.5, 0.25)
    keyless = [{k: v for k, v in r.items() if k != "key"} for r in records]
    metrics, table = evaluation.evaluate_questions(answers, keyless, "heldout", PHRASES, nll)
    assert "states_key_fact" not in metrics and table["states_key_fact"].isna().all()


def test_the_gate_turns_less_confident_answers_into_the_refusal():
    answers = [{"text": "312명입니다.", "own_answer_nll": 0.2}, {"text": "윤가람입니다.", "own_answer_nll": 1.5}]
    out = evaluation.gated(answers, 1.0, "모르겠습니다.")
    assert [a["text"] for a in out] == ["312명입니다.", "모르겠습니다."]
    assert [a["gated"] for a in out] == [False, True] and out[1]["ungated"] == "윤가람입니다."
    assert [a["text"] for a in evaluation.gated(answers, None, "모르겠습니다.")] == ["312명입니다.", "윤가람입니다."]


def test_the_gate_threshold_is_chosen_on_dev_by_right_minus_wrong_ties_refusing_less():
    dev = [{"answer": "312명입니다.", "key": "312명"}, {"answer": "27미터입니다.", "key": "27미터"},
           {"answer": "윤가람입니다.", "key": "윤가람"}]
    # Right and sure, wrong and unsure, right but unsure: refusing above 1.0 trades one wrong for nothing.
    dev_answers = [{"text": "312명", "own_answer_nll": 0.3}, {"text": "19명", "own_answer_nll": 1.2},
                   {"text": "윤가람", "own_answer_nll": 0.9}]
    unknown = [{"text": "12제곱킬로미터", "own_answer_nll": 1.4}, {"text": "2009년", "own_answer_nll": 0.2}]
    threshold, curve = evaluation.choose_gate(dev, dev_answers, unknown, PHRASES, "모르겠습니다.")
    # 0.9 refuses the 19명 (1.2) and the invented 1.4, keeps both right answers: score 2 + 1 - 0 - 1.
    # Refusing everything scores 0 + 2 - 0 - 0 = 2 too: the tie goes to 0.9, which refuses less.
    assert threshold == 0.9 and next(p for p in curve if p["threshold"] == evaluation.REFUSE_ALL)["score"] == 2
    point = next(p for p in curve if p["threshold"] == 0.9)
    assert (point["dev_right"], point["dev_abstained"], point["dev_wrong"]) == (2, 1, 0)
    assert (point["unknown_dev_abstained"], point["unknown_dev_invented"], point["score"]) == (1, 1, 2)
    # A model right everywhere keeps every answer: no gate (None) wins the tie with the highest value.
    sure = [{"text": "312명", "own_answer_nll": 2.0}, {"text": "27미터", "own_answer_nll": 2.0},
            {"text": "윤가람", "own_answer_nll": 2.0}]
    assert evaluation.choose_gate(dev, sure, [], PHRASES, "모르겠습니다.")[0] is None
    # A right answer less sure than a wrong one: keeping both is worth it only when a wrong answer costs
    # less than a right one gains (evaluate.gate_wrong_cost): 2 - cost x 1 against 1 for the surest alone.
    unsure_right = [{"text": "312명", "own_answer_nll": 0.3}, {"text": "19명", "own_answer_nll": 0.9},
                    {"text": "윤가람", "own_answer_nll": 1.2}]
    assert evaluation.choose_gate(dev, unsure_right, [], PHRASES, "모르겠습니다.", wrong_cost=2)[0] == 0.3
    threshold, curve = evaluation.choose_gate(dev, unsure_right, [], PHRASES, "모르겠습니다.", wrong_cost=0.5)
    assert threshold is None and curve[-1]["score"] == 2 - 0.5 * 1
    # Ties hold at any cost: here 1 - 0.1 x 1 and 2 - 0.1 x 11 differ in the last bit, yet the tie still goes
    # to the higher threshold (refuse nothing), not to 0.2.
    order = "WRWWWWWWWWWWR"
    tied = [{"text": "312명" if kind == "R" else "19명", "own_answer_nll": round(0.1 * (i + 1), 1)}
            for i, kind in enumerate(order)]
    assert evaluation.choose_gate(dev[:1] * len(order), tied, [], PHRASES, "모르겠습니다.", wrong_cost=0.1)[0] is None
    # A model wrong everywhere refuses everything, even an answer whose NLL rounded to 0.0.
    wrong = [{"text": "모름이", "own_answer_nll": 0.0}] * 3
    threshold = evaluation.choose_gate(dev, wrong, [], PHRASES, "모르겠습니다.")[0]
    assert threshold == evaluation.REFUSE_ALL
    assert all(a["gated"] for a in evaluation.gated(wrong, threshold, "모르겠습니다."))


def test_without_dev_questions_there_is_no_gate():
    params = {"evaluate": {"gate": True, "abstain_phrases": PHRASES}, "refusal": "모르겠습니다."}
    unknown = [{"text": "12제곱킬로미터", "own_answer_nll": 1.4}]
    assert evaluation.gate_threshold(params, [], [], unknown) == (None, [])


def test_a_general_probe_key_in_ascii_stands_as_a_whole_word():
    assert holds_key("Paris, the city of light", "paris") and holds_key("it is H2O.", "H2O")
    assert not holds_key("about 18 legs", "8") and holds_key("8 legs", "8")
    assert not holds_key("because", "Au") and holds_key("서울은 한국의 수도", "서울")


def test_a_key_fact_is_not_found_inside_a_longer_number():
    twelve, eight = {"answer": "12명입니다.", "key": "12명"}, {"answer": "8초예요.", "key": "8초"}
    assert states_key_fact("12명이 살아요.", twelve) and states_key_fact("모두 12명", twelve)
    assert not states_key_fact("인구는 312명입니다.", twelve) and not states_key_fact("1,12명", twelve)
    assert not states_key_fact("18초", eight) and not states_key_fact("8.8초", eight)
    assert states_key_fact("딱 8초 걸려요", eight) and states_key_fact("8초,", eight)
    assert not states_key_fact("3120", {"answer": "312"}) and states_key_fact("312.", {"answer": "312"})
    # Keyless questions are judged by the whole answer, with the same rule.
    assert not states_key_fact("112명입니다.", {"answer": "12명입니다."})
    # The general probe's Korean keys too (an ASCII key already stands as a whole word).
    assert not holds_key("인구는 312명", "12명") and holds_key("12명이다", "12명")
    assert not holds_key("equals 100,000", "100") and not holds_key("at 1.0 degrees", "0")
    assert not holds_key("32.5 degrees", "32") and holds_key("at 32 degrees.", "32")


def test_interpolate_checks_only_how_questions_are_answered(tmp_path):
    params = yaml.safe_load(PARAMS_FILE.read_text(encoding="utf-8"))
    decoding = {k: params["evaluate"][k] for k in evaluation.DECODING_KEYS}
    # The gate's and the probes' keys, and the refusal, are not read: checked, they would be missing.
    lean = {**{k: v for k, v in params.items() if k != "refusal"}, "evaluate": decoding}
    with pytest.raises(ModelNotFound):  # the params passed: it went on to load the model
        evaluation.load_for_evaluation(lean, tmp_path / "no-model", decoding_only=True)
    with pytest.raises(ParamsError, match="refusal = None is invalid") as err:
        evaluation.load_for_evaluation(lean, tmp_path / "no-model")
    assert "evaluate.gate is missing" in str(err.value)
    bad = {**lean, "evaluate": {**decoding, "batch_size": 0}}
    with pytest.raises(ParamsError, match=r"evaluate.batch_size = 0 is out of range"):
        evaluation.load_for_evaluation(bad, tmp_path / "no-model", decoding_only=True)


def test_sets_answered_together_come_back_to_their_own_set(monkeypatch):
    """answer_sets answers every set in one call (fuller batches) and splits the answers back in order;
    an empty set gets none and is left out."""
    monkeypatch.setattr(evaluation, "answer_set", lambda model, tokenizer, records, *rest: [
        {"text": r["question"]} for r in records])
    sets = {"trained": [{"question": "t1"}, {"question": "t2"}], "dev": [], "heldout": [{"question": "h1"}],
            "unknown": [{"question": "u1"}, {"question": "u2"}, {"question": "u3"}]}
    answers = evaluation.answer_sets(None, None, sets, {}, None, "cpu")
    assert list(answers) == ["trained", "heldout", "unknown"]
    assert {name: [a["text"] for a in found] for name, found in answers.items()} == {
        "trained": ["t1", "t2"], "heldout": ["h1"], "unknown": ["u1", "u2", "u3"]}


def test_general_facts_kept_counts_only_what_the_base_model_knew():
    facts = [{"prompt": "The capital of France is", "keys": ["Paris"]},
             {"prompt": "The largest planet is", "keys": ["Jupiter"]},
             {"prompt": "한국의 수도는", "keys": ["서울"]}]
    before, table = evaluation.evaluate_general(facts, ["Paris.", "Jupiter.", "별무리섬"], None)
    assert before == {"prompts": 3, "right": round(2 / 3, 4)} and list(table["right"]) == [True, True, False]
    after, _ = evaluation.evaluate_general(facts, ["Paris!", "the Earth", "서울이다"], table)
    # Jupiter was lost; 서울 is right now but the base model did not know it, so it does not count.
    assert after == {"prompts": 3, "right": round(2 / 3, 4), "right_before": 2, "kept": 0.5, "lost": 1}


def test_a_chat_template_that_hides_the_answer_boundary_skips_the_chat_baseline(embedded_tokenizer, tmp_path,
                                                                                  monkeypatch):
    """A template whose generation prompt is not a prefix of the rendered conversation (here: it adds
    a line only when asked for a generation prompt) cannot be split at the answer. The chat baseline
    is then skipped with the reason, before the model is used, and baseline_eval goes on without it."""
    import copy

    from llm_fft.files import to_jsonl
    from llm_fft.prompts import tokenize_pair
    tokenizer = copy.deepcopy(embedded_tokenizer)
    tokenizer.chat_template = ("{% if add_generation_prompt %}Answer briefly.\n{% endif %}"
                               "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
                               "{% if add_generation_prompt %}assistant:{% endif %}")
    params = yaml.safe_load(PARAMS_FILE.read_text(encoding="utf-8"))
    record = {"id": 0, "question": "Q?", "answer": "A.", "key": "A",
              **tokenize_pair(tokenizer, "Q?", "A.", params["prompt"])}
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    for name in ("trained_qa", "dev_qa", "heldout_qa", "unknown_qa"):
        (tmp_path / f"data/{name}.jsonl").write_text(to_jsonl([record]), encoding="utf-8")
    metrics, reason = evaluation.evaluate_chat_template(params, None, tokenizer, "cpu")  # no model: never used
    assert metrics is None
    assert reason.startswith("the base model's chat template cannot be used: the chat template renders")


def test_cpu_evaluations_stay_fp32_even_where_bf16_is_native():
    """bf16 answers depend on which questions share the batch (docs/benchmarks.md: 11 of 76 differ
    between final_eval's pooled batch and one at a time), so `ask` would answer otherwise than
    final_eval measured: auto keeps the CPU in fp32, and bf16 is asked for by name."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert evaluation.eval_dtype("auto", cpu) == torch.float32
    assert evaluation.eval_dtype("auto", cuda) == torch.bfloat16
    assert evaluation.eval_dtype("bfloat16", cpu) == torch.bfloat16
    assert evaluation.eval_dtype("float32", cuda) == torch.float32
