"""The facts source (its facts and its unknown questions), its coverage, the params loader and atomic writes."""

import difflib
from pathlib import Path

import pytest

from llm_fft import coverage
from llm_fft.facts import load_facts, load_unknown
from llm_fft.formats import DatasetError
from llm_fft.retention import load_retention
from llm_fft.text import normalize

REPO = Path(__file__).resolve().parents[1]


def test_load_facts_reports_every_bad_fact(tmp_path):
    facts = tmp_path / "facts.yaml"
    facts.write_text(
        "subject: 별무리섬\n"
        "unkown: ['U?']\n"                                                  # misspelt: would drop the list
        "facts:\n"
        "  - {answer: 'A.', questions: ['Q0?']}\n"                          # fine: the rest is optional
        "  - {answer: '', questions: ['Q1?']}\n"
        "  - {answer: 'A.'}\n"
        "  - {answer: 'x <|answer|> y', questions: ['Q3?']}\n"
        "  - {answer: '27미터입니다.', key: '28미터', questions: ['Q4?'], held_out: ['H4?']}\n"
        "  - {answer: 'A.', questions: ['Q5?'], held_out: ['H5?']}\n"
        "  - {answer: 'A.', key: A, questions: ['Q6?'], held_out: ['Q6?']}\n"
        "  - {answer: '27미터입니다.', key: 27미터, answers: ['높이는 27 m입니다.'], statements: ['등대는 높다.'],\n"
        "     questions: ['Q7?'], dev: ['D7?'], held_out: ['D7?']}\n"
        "  - {answer: 'A.', key: A, questions: ['Q8?'], dev: 'D8?'}\n"
        "  - {answer: 'B.', key: B, questions: ['Q9?'], dev: ['Q0'], held_out: ['  Q9']}\n"
        "  - {answer: 'C 12명.', key: 12명, questions: ['Q10?', 'Q10?', 'Q0?']}\n"
        "  - {answer: '인구는 312명입니다.', key: 12명, questions: ['Q11?']}\n", encoding="utf-8")
    with pytest.raises(DatasetError) as err:
        load_facts(facts)
    assert str(err.value).splitlines() == [
        f"{facts}: unknown key 'unkown' (did you mean 'unknown'? the file holds subject, facts, unknown, "
        "unknown_dev, unknown_train)",
        f"{facts}: facts[1]: empty answer",
        f"{facts}: facts[2]: expected the keys answer, questions and optionally key, answers, statements, dev, "
        f"held_out; got \"{{'answer': 'A.'}}\"",
        f"{facts}: facts[3]: the markers <|question|> / <|answer|> cannot appear in text",
        f"{facts}: facts[4]: key '28미터' does not appear in the answer '27미터입니다.'",
        f"{facts}: facts[5]: held_out and dev questions need a key (the short fact an answer must state)",
        f"{facts}: facts[7]: key '27미터' does not appear in answers '높이는 27 m입니다.'",
        f"{facts}: facts[7]: key '27미터' does not appear in statements '등대는 높다.'",
        f"{facts}: facts[8]: dev must be a list of non-empty strings",
        f"{facts}: facts[11]: key '12명' does not appear in the answer '인구는 312명입니다.'",  # inside 312명
        # Asked twice, in one fact or across facts, compared normalised (spaces, a final ?).
        f"{facts}: facts[6]: held_out question 'Q6?' is also a training question of facts[6]",
        f"{facts}: facts[7]: held_out question 'D7?' is also a dev question of facts[7]",
        f"{facts}: facts[9]: dev question 'Q0' is also a training question of facts[0]",
        f"{facts}: facts[9]: held_out question 'Q9' is also a training question of facts[9]",
        f"{facts}: facts[10]: training question 'Q10?' is also a training question of facts[10]",
        f"{facts}: facts[10]: training question 'Q0?' is also a training question of facts[0]",
    ]


def test_load_unknown_reports_every_bad_question(tmp_path):
    facts = tmp_path / "facts.yaml"
    facts.write_text(
        "facts:\n"
        "  - {answer: 'A.', key: A, questions: ['Q?'], dev: ['D?'], held_out: ['H?']}\n"
        "unknown:\n"
        "  - ' U? '\n"               # fine: stripped
        "  - ''\n"
        "  - 3\n"
        "  - 'x <|question|> y'\n"
        "  - 'Q?'\n"
        "  - 'D?'\n"
        "  - 'H'\n"                  # the held-out question, normalised (a final ? does not count)
        "  - 'U?'\n", encoding="utf-8")
    with pytest.raises(DatasetError) as err:
        load_unknown(facts)
    answered = "the data answers it, so it is not unknown"
    assert str(err.value).splitlines() == [
        f"{facts}: unknown[1]: empty question",
        f"{facts}: unknown[2]: expected a question, got the int '3'",
        f"{facts}: unknown[3]: the markers <|question|> / <|answer|> cannot appear in text: 'x <|question|> y'",
        f"{facts}: unknown[4]: 'Q?' is also a training question of facts[0]: {answered}",
        f"{facts}: unknown[5]: 'D?' is also a dev question of facts[0]: {answered}",
        f"{facts}: unknown[6]: 'H' is also a held_out question of facts[0]: {answered}",
        f"{facts}: unknown[7]: 'U?' is also unknown[0]: ask it once, in one list",
    ]


def test_load_unknown_keeps_the_three_lists_apart(tmp_path):
    facts = tmp_path / "facts.yaml"
    facts.write_text(
        "facts:\n  - {answer: 'A.', questions: ['Q?']}\n"
        "unknown: ['U?']\nunknown_dev: ['V?', 'U?']\nunknown_train: ['W?', 'V?', 'Q?']\n", encoding="utf-8")
    with pytest.raises(DatasetError) as err:
        load_unknown(facts)
    assert str(err.value).splitlines() == [
        f"{facts}: unknown_dev[1]: 'U?' is also unknown[0]: ask it once, in one list",
        f"{facts}: unknown_train[1]: 'V?' is also unknown_dev[0]: ask it once, in one list",
        f"{facts}: unknown_train[2]: 'Q?' is also a training question of facts[0]: the data answers it, so it is "
        "not unknown",
    ]


def test_load_unknown_is_a_list_or_nothing_and_leaves_load_facts_as_it_was(tmp_path):
    facts = tmp_path / "facts.yaml"
    facts.write_text("facts:\n  - {answer: 'A.', questions: ['Q?']}\n", encoding="utf-8")
    assert load_unknown(facts) == {"unknown": [], "unknown_dev": [], "unknown_train": []}  # absent: no probe
    facts.write_text("facts:\n  - {answer: 'A.', questions: ['Q?']}\nunknown: ['U?']\n", encoding="utf-8")
    assert load_unknown(facts) == {"unknown": ["U?"], "unknown_dev": [], "unknown_train": []}
    assert load_facts(facts) == [{"answer": "A.", "key": "", "answers": [], "statements": [], "questions": ["Q?"],
                                  "dev": [], "held_out": []}]
    facts.write_text("facts:\n  - {answer: 'A.', questions: ['Q?']}\nunknown: U?\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"facts.yaml: unknown must be a list of questions no fact answers, got 'U\?'"):
        load_unknown(facts)


def test_default_facts_have_unknown_questions_in_three_separate_lists():
    # load_unknown checks them against every phrasing of every fact and against each other.
    lists = load_unknown(REPO / "data" / "facts.yaml")
    assert 10 <= len(lists["unknown"]) <= 16 and 10 <= len(lists["unknown_dev"]) and 30 <= len(lists["unknown_train"])
    places = ("별무리섬", "물결초등학교", "은하호", "파도소리 식당", "달빛귤", "해오름봉", "꼬북별", "윤가람", "팽나무",
              "별빛바다", "풍력", "물떼새")
    assert all(any(name in q for name in places) for questions in lists.values() for q in questions)


def test_general_probe_is_never_trained_on():
    """No general-knowledge probe prompt appears in the facts file, the rehearsal prompts or the
    example dataset files, and none of those texts appears inside a probe prompt."""
    probe = [normalize(f["prompt"]) for f in load_retention()["facts"]]
    assert len(probe) >= 40 and len(set(probe)) == len(probe)
    sources = [REPO / "data" / name for name in ("facts.yaml", "rehearsal_prompts.yaml", "my_dataset.txt",
                                                 "my_dev.jsonl", "my_heldout.jsonl")]
    texts = [normalize(t) for path in sources for t in path.read_text(encoding="utf-8").splitlines()]
    trained = [t for t in texts if len(t) >= 8]
    assert not [p for p in probe if any(p in t or t in p for t in trained)]
    assert all(f["keys"] and all(isinstance(k, str) and k.strip() for k in f["keys"])
               for f in load_retention()["facts"])


def similarity(a, b):
    """Character similarity of two questions, punctuation and spaces ignored (0 to 1)."""
    def letters(text):
        return "".join(c for c in text if c.isalnum())
    return difflib.SequenceMatcher(None, letters(a), letters(b)).ratio()


def test_default_facts_keep_training_dev_and_held_out_phrasings_apart():
    facts = load_facts(REPO / "data" / "facts.yaml")
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


def test_check_params_knows_every_key_of_params_yaml_and_no_misspelt_one():
    import copy

    from llm_fft.params import load_params
    from stages.check_params import problems_in_params
    params = load_params()
    assert problems_in_params(params) == []
    params = copy.deepcopy(params)
    params["finetune"]["epoch"] = 2
    params["epochs"] = 2
    params["evaluation"] = {"batch_size": 8}
    del params["bench"]
    assert problems_in_params(params) == [
        "params.yaml: epochs is not a known key",
        "params.yaml: evaluation is not a known key (did you mean 'evaluate'?)",
        "params.yaml: finetune.epoch is not a known key (did you mean 'epochs'?)",
        "params.yaml: section 'bench' is missing or not a mapping"]


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


def test_the_default_facts_are_not_thin():
    report = coverage.diagnose(coverage.from_facts(load_facts(REPO / "data" / "facts.yaml"), 0, True, True))
    assert report["facts"] == 26 and report["facts_with_one_phrasing"] == 0 and report["warnings"] == []
    assert report["facts_with_statements"] == report["facts_with_dev_questions"] == 26
    # One phrasing per fact (questions_per_fact 1) is what the warning is for.
    thin = coverage.diagnose(coverage.from_facts(load_facts(REPO / "data" / "facts.yaml"), 1, True, False))
    assert thin["facts_with_one_phrasing"] == 26 and thin["facts_with_several_answers"] == 0
    assert thin["facts_with_statements"] == 0
    assert thin["warnings"][0].startswith("26 of 26 facts have fewer than 3 training phrasings")


def test_coverage_of_your_own_pairs_is_counted_by_the_facts_your_questions_ask_for():
    """A file names no facts: the training pairs whose answer states a dev or held-out question's key
    are that fact's phrasings, each worded as it likes."""
    pairs = [{"question": "When did the library open?", "answer": "The library opened in 1998."},
             {"question": "Since when is the library open?", "answer": "It has been open since 1998."},
             {"question": "Who runs the library?", "answer": "Mina Park runs it."},
             {"question": "How many floors does it have?", "answer": "It has three floors."}]
    dev = [{"question": "In what year did it open?", "answer": "The library opened in 1998.", "key": "1998"}]
    heldout = [{"question": "Who is in charge of the library?", "answer": "Mina Park runs it.", "key": "Mina Park"},
               {"question": "Who founded it?", "answer": "Jun Lee founded it.", "key": "Jun Lee"},
               {"question": "What does it lend?", "answer": "Books and films."}]
    rows, unasked_pairs = coverage.from_pairs(pairs, dev, heldout)
    assert [(r["fact"], r["phrasings"], r["answers"], r["dev"], r["heldout"]) for r in rows] == [
        ("1998", 2, 2, 1, 0), ("Mina Park", 1, 1, 0, 1), ("Jun Lee", 0, 0, 0, 1), ("Books and films", 0, 0, 0, 1)]
    assert unasked_pairs == 1  # the floors: no dev or held-out question asks for them
    report = coverage.diagnose(rows, unasked_pairs)
    assert (report["facts"], report["facts_with_one_phrasing"], report["facts_stated_by_no_training_pair"]) == (4, 1, 2)
    assert report["facts_with_fewer_than_3_phrasings"] == 2
    assert report["training_pairs_about_no_asked_fact"] == 1
    assert report["warnings"][0].startswith("2 of 4 facts have fewer than 3 training phrasings ('1998', 'Mina Park')")
    assert report["warnings"][1].startswith("2 facts asked by dev or held-out questions are stated by no training "
                                            "pair ('Jun Lee', 'Books and films')")
    assert coverage.diagnose([], 4)["warnings"][0].startswith("No dev or held-out question asks for a trained fact")


def test_the_default_rehearsal_facts_pass_the_checks_and_keep_off_the_probe():
    """make_rehearsal's own checks on the shipped file: no key and no opening of the retention probe."""
    from stages.make_rehearsal import read_prompts
    prompts, facts = read_prompts(REPO / "data" / "rehearsal_prompts.yaml", load_retention())
    assert len(prompts) == 64 and len(facts) >= 60
    probe_keys = {k.casefold() for f in load_retention()["facts"] for k in f["keys"]}
    assert not [f for f in facts if any(k.casefold() in probe_keys for k in f["keys"])]
