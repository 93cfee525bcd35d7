"""Dataset file formats: exact round trips in every format, detection, duplicates, and every bad input
in tests/bad_inputs/ (its expected.yaml says which message each file must produce); the file of
unknown questions (questions alone) of the file backend."""

import json
from pathlib import Path

import pytest
import yaml

from llm_fft.formats import (
    DATASET_SPEC,
    DEFAULT_SEPARATOR,
    FORMATS,
    DatasetError,
    detect_format,
    read_pairs,
    read_questions,
    separator_problem,
    write_pairs,
)

REPO = Path(__file__).resolve().parents[1]
BAD_INPUTS = Path(__file__).resolve().parent / "bad_inputs"
EXPECTED = yaml.safe_load((BAD_INPUTS / "expected.yaml").read_text(encoding="utf-8"))

# Values that stress every format: Korean, a literal '|' and the separator text itself, quotes,
# backslashes (also before '|' and 'n'), JSON braces, a leading '#', a tab, a line break, and
# surrounding whitespace that every reader strips.
PAIRS = [
    ("별무리섬은 어느 바다에 있나요?", "별무리섬은 제주도 남쪽 바다에 있는 작은 섬입니다."),
    ("  What does 'a | b' mean?  ", ' "a or b" — with a \\ backslash '),
    ("JSON {} and \\| and \\n literally?", 'yes: {"k": 1}\tand a tab'),
    ("#1 starts with a hash?", "first line\nsecond line"),
    ("1. numbered, and the number belongs to the question?", "- yes, and a dash starts the answer"),
    ("a | b | c", "|edge|"),
    ("ends with a pipe |", "\\"),
    ("ends with a backslash \\", "| starts with a pipe"),
]
STRIPPED = [(q.strip(), a.strip()) for q, a in PAIRS]
WRITERS = [("custom_tokens", DEFAULT_SEPARATOR), ("json", DEFAULT_SEPARATOR), ("jsonl", DEFAULT_SEPARATOR),
           ("separator", DEFAULT_SEPARATOR), ("separator", r"\|"), ("separator", r"\s*\|\s*"),
           ("separator", r"\t")]


def question_answers(pairs):
    return [(p["question"], p["answer"]) for p in pairs]


@pytest.mark.parametrize("fmt, separator", WRITERS)
def test_write_then_read_gives_the_same_pairs(fmt, separator):
    text = write_pairs(PAIRS, fmt, separator)
    pairs, warnings = read_pairs(text.encode("utf-8"), "d.txt", fmt, separator)
    assert question_answers(pairs) == STRIPPED
    assert warnings == []


def test_every_format_gives_byte_identical_pairs():
    dumps = set()
    for fmt, separator in WRITERS:
        pairs, _ = read_pairs(write_pairs(PAIRS, fmt, separator).encode("utf-8"), "d.txt", fmt, separator)
        dumps.add(json.dumps([{"question": q, "answer": a} for q, a in question_answers(pairs)],
                             ensure_ascii=False))
    assert len(dumps) == 1


def test_separator_output_follows_the_escape_rule():
    text = write_pairs(PAIRS[1:7], "separator")
    assert text.splitlines() == [
        r"""What does 'a \| b' mean? | "a or b" — with a \\ backslash""",
        "JSON {} and \\\\| and \\\\n literally? | yes: {\"k\": 1}\tand a tab",
        r"\#1 starts with a hash? | first line\nsecond line",
        r"1\. numbered, and the number belongs to the question? | - yes, and a dash starts the answer",
        r"a \| b \| c | |edge|",
        r"ends with a pipe \| | \\",
    ]


def test_escaped_pipe_is_not_a_separator():
    pairs, _ = read_pairs(b"a \\| b | c\n", "d.txt", "separator")
    assert question_answers(pairs) == [("a | b", "c")]
    pairs, _ = read_pairs(b"x\\|y|z\n", "d.txt", "separator", r"\|")
    assert question_answers(pairs) == [("x|y", "z")]


def test_custom_tokens_writer_writes_the_seed_blocks():
    assert write_pairs([("섬 이름은?", "별무리섬입니다."), ("Q2?", "A2.")], "custom_tokens") == (
        "<|question|>\n섬 이름은?\n<|answer|>\n별무리섬입니다.\n\n<|question|>\nQ2?\n<|answer|>\nA2.\n\n")


def test_where_names_file_and_line_in_every_format():
    pairs = [("Q1?", "A1."), ("Q2?", "A2.")]
    expected = {"custom_tokens": ["d:1", "d:6"], "json": ["d:2 ($[0])", "d:6 ($[1])"],
                "jsonl": ["d:1", "d:2"], "separator": ["d:1", "d:2"]}
    for fmt in FORMATS:
        read, _ = read_pairs(write_pairs(pairs, fmt).encode("utf-8"), "d", fmt)
        assert [p["where"] for p in read] == expected[fmt], fmt


def test_comments_and_blank_lines_are_skipped_in_separator_format():
    raw = b"# header | not a pair\n\n  # indented comment\nQ1? | A1.\n\r\nQ2? | A2.\n"
    pairs, _ = read_pairs(raw, "d.txt", "separator")
    assert [(p["question"], p["where"]) for p in pairs] == [("Q1?", "d.txt:4"), ("Q2?", "d.txt:6")]


@pytest.mark.parametrize("fmt", FORMATS)
def test_bom_crlf_and_lone_cr_are_accepted(fmt):
    text = write_pairs(STRIPPED, fmt)
    plain, _ = read_pairs(text.encode("utf-8"), "d.txt", fmt)
    for newline in ("\r\n", "\r"):
        raw = ("\ufeff" + text.replace("\n", newline)).encode("utf-8")
        pairs, _ = read_pairs(raw, "d.txt", fmt)
        assert pairs == plain  # same values and the same line numbers


@pytest.mark.parametrize("fmt, name", [("custom_tokens", "d.txt"), ("json", "d.txt"), ("json", "d.json"),
                                       ("jsonl", "d.txt"), ("jsonl", "d.jsonl"), ("separator", "d.txt")])
def test_each_format_is_detected(fmt, name):
    text = write_pairs(STRIPPED, fmt)
    assert detect_format(text, name) == fmt
    pairs, _ = read_pairs(text.encode("utf-8"), name)  # fmt="auto"
    assert question_answers(pairs) == STRIPPED


def test_ambiguous_format_is_a_clear_error():
    with pytest.raises(DatasetError) as err:
        detect_format('{"question": "Q?", "answer": "A."}\n', "data.json")
    assert str(err.value) == (
        "data.json: ambiguous format: the extension .json says json but the content starts with '{', "
        "like jsonl; rename the file or name the format explicitly (one of custom_tokens, json, jsonl, "
        "separator)")


def test_a_broken_custom_tokens_file_with_a_pipe_keeps_its_own_error():
    # Not every line has a '|': custom_tokens, and its error names the line (not "ambiguous format").
    with pytest.raises(DatasetError, match=r"^c.txt:1: text before the first <\|question\|>: 'stray line'$"):
        read_pairs(b"stray line\n<|question|>\nQ?\n<|answer|>\nA | B.\n", "c.txt")


def test_exact_duplicate_is_merged_with_a_warning_naming_both_places():
    raw = (b"<|question|>\nQ?\n<|answer|>\nA.\n\n<|question|>\nOther?\n<|answer|>\nB.\n\n"
           b"<|question|>\n  Q?\n<|answer|>\nA.  \n")
    pairs, warnings = read_pairs(raw, "d.txt")
    assert question_answers(pairs) == [("Q?", "A."), ("Other?", "B.")]
    assert warnings == ["d.txt:11: duplicate of the pair at d.txt:1, kept once: 'Q?'"]


def test_every_problem_is_one_line_in_file_order():
    name = "22_multiple_problems.txt"
    with pytest.raises(DatasetError) as err:
        read_pairs((BAD_INPUTS / name).read_bytes(), name, "custom_tokens")
    assert str(err.value).splitlines() == [
        f"{name}:6: block has no <|answer|>: '인구는?'",
        f"{name}:9: empty question (answer '312명.')",
        f"{name}:13: empty answer to '등대지기는?'",
    ]


def test_writer_refuses_pairs_the_reader_would_refuse():
    with pytest.raises(DatasetError) as err:
        write_pairs([("Q?", "A."), (" ", "B."), ("R?", "x <|answer|> y"), {"question": "Q?", "answer": "C."},
                     ("Q?", "A.")], "jsonl")
    assert str(err.value).splitlines() == [
        "pairs[1]: empty question (answer 'B.')",
        "pairs[2]: marker <|answer|> inside the answer: 'x <|answer|> y'",
        "pairs[3]: question 'Q?' is also at pairs[0] with another answer: 'A.' there, 'C.' here",
        "pairs[4]: duplicate of the pair at pairs[0], kept once: 'Q?' (the reader would merge it)",
    ]


def test_separator_and_format_arguments_are_checked():
    assert separator_problem(DEFAULT_SEPARATOR) is None
    assert "not a valid regular expression" in separator_problem("(")
    assert "matches an empty text" in separator_problem(r"\s*")
    assert "escape character" in separator_problem(r"\\")
    spec_check = DATASET_SPEC["separator"][1]
    assert spec_check(r"\|") and not spec_check("|?")
    with pytest.raises(ValueError, match="unknown dataset format 'yaml'"):
        read_pairs(b"Q? | A.\n", "d.txt", "yaml")
    with pytest.raises(ValueError, match="not one fixed text"):
        write_pairs([("Q?", "A.")], "separator", r"\s+-+\s+")


def test_every_bad_input_file_has_an_expectation():
    files = {p.name for p in BAD_INPUTS.iterdir()} - {"expected.yaml"}
    assert len(files) >= 22
    assert files == set(EXPECTED), "files without an entry, or entries without a file"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_input_is_refused_with_its_message(name):
    case = EXPECTED[name]
    with pytest.raises(DatasetError) as err:
        read_pairs((BAD_INPUTS / name).read_bytes(), name, case["format"],
                   case.get("separator", DEFAULT_SEPARATOR))
    missing = [m for m in case["messages"] if m not in str(err.value)]
    assert not missing, f"{name}: not in the message {str(err.value)!r}: {missing}"


def test_text_that_starts_like_json_but_has_separators_is_ambiguous():
    raw = "[공지] 인구는? | 312명\n".encode()
    with pytest.raises(DatasetError, match=r"d.txt: ambiguous format: the content starts with '\[' like json"):
        read_pairs(raw, "d.txt")
    pairs, _ = read_pairs(raw, "d.txt", "separator")  # named explicitly, it reads
    assert question_answers(pairs) == [("[공지] 인구는?", "312명")]


def test_a_header_pair_cannot_be_written_in_the_separator_format():
    with pytest.raises(ValueError, match="reads as a header row"):
        write_pairs([("질문", "답")], "separator")
    assert read_pairs(write_pairs([("질문", "답")], "jsonl").encode(), "d.jsonl")[0][0]["question"] == "질문"


def test_evaluation_files_may_give_a_key_that_the_answer_states_and_may_hold_no_pairs():
    raw = ('{"question": "인구는?", "answer": "모두 312명입니다.", "key": " 312명 "}\n'
           '{"question": "등대지기는?", "answer": "윤가람입니다."}\n').encode()
    pairs, _ = read_pairs(raw, "h.jsonl", evaluation=True)
    assert [{k: p[k] for k in ("question", "answer", "key") if k in p} for p in pairs] == [
        {"question": "인구는?", "answer": "모두 312명입니다.", "key": "312명"},
        {"question": "등대지기는?", "answer": "윤가람입니다."}]
    assert read_pairs(b"# no held-out questions yet\n\n", "h.txt", evaluation=True) == ([], [])
    assert read_pairs(b"", "h.jsonl", evaluation=True) == ([], [])
    with pytest.raises(DatasetError, match="empty file"):  # a training file must hold pairs
        read_pairs(b"", "d.jsonl")
    # The example's pairs deleted, its header kept: said so, not "cannot tell the format".
    with pytest.raises(DatasetError, match=r"^data/my_dataset.txt: no question/answer pairs: only '#' comment"):
        read_pairs(b"# my pairs, one per line: question | answer\n\n# (none yet)\n", "data/my_dataset.txt")


def test_a_bad_key_in_an_evaluation_file_is_an_error_naming_the_line():
    raw = ('[{"question": "인구는?", "answer": "312명입니다.", "key": "313명"},\n'
           ' {"question": "등대는?", "answer": "27미터입니다.", "key": 27},\n'
           ' {"question": "축제는?", "answer": "8월입니다.", "kye": "8월"},\n'
           ' {"question": "주민은?", "answer": "312명입니다.", "key": "12명"}]\n').encode()
    with pytest.raises(DatasetError) as err:
        read_pairs(raw, "h.json", evaluation=True)
    assert str(err.value).split("\n") == [
        "h.json:1 ($[0]): key '313명' does not appear in the answer '312명입니다.'",
        "h.json:2 ($[1]): 'key' must be a string, got a number: '27'",
        "h.json:3 ($[2]): unknown key 'kye' (did you mean 'key'? allowed: question, answer, key): "
        "'{\"question\": \"축제는?\", \"answer\": \"8월입니다.\",…'",
        # scored as the evaluations score it: 12명 inside 312명 is not stated
        "h.json:4 ($[3]): key '12명' does not appear in the answer '312명입니다.'"]
    with pytest.raises(DatasetError, match=r"unknown key 'key' \(allowed: question, answer\)"):
        read_pairs(b'{"question": "Q?", "answer": "A.", "key": "A"}\n', "d.jsonl")  # not in a training file


def test_a_questions_file_skips_comments_and_blank_lines_and_names_every_bad_line():
    raw = "# questions the data does not answer\n\n  별무리섬의 면적은?  \r\n\t# indented comment\n은하호의 뱃삯은?\n".encode()
    assert read_questions(raw, "u.txt") == [{"question": "별무리섬의 면적은?", "where": "u.txt:3"},
                                            {"question": "은하호의 뱃삯은?", "where": "u.txt:5"}]
    assert read_questions(b"# only a comment\n\n", "u.txt") == []  # none: the probe is not run
    bad = "면적은?\n등대는 <|answer|> 언제?\n면적은\n<|endoftext|>\n".encode()
    with pytest.raises(DatasetError) as error:
        read_questions(bad, "u.txt")
    assert str(error.value).splitlines() == [
        "u.txt:2: marker <|answer|> inside the question: '등대는 <|answer|> 언제?'",
        "u.txt:3: question '면적은' is also at u.txt:1: ask it once",
        "u.txt:4: marker-like text '<|endoftext|>' inside the question (a misspelt marker? special-token text is "
        "not allowed in pairs): '<|endoftext|>'"]


def own_files(folder, unknown):
    """The file backend's six files in folder, and its generate_dataset section naming them."""
    (folder / "my_dataset.txt").write_text("빵집 이름은? | 달빛제과입니다.\n문 여는 시간은? | 7시입니다.\n", encoding="utf-8")
    (folder / "my_dev.jsonl").write_text('{"question": "가게 이름이 뭐예요?", "answer": "달빛제과입니다."}\n',
                                         encoding="utf-8")
    (folder / "my_heldout.jsonl").write_text("", encoding="utf-8")
    (folder / "my_unknown.txt").write_text(unknown, encoding="utf-8")
    (folder / "my_unknown_dev.txt").write_text("# none\n", encoding="utf-8")
    (folder / "my_unknown_train.txt").write_text("문 닫는 시간은?\n", encoding="utf-8")
    return {name: str(folder / f"my_{kind}") for name, kind in (
        ("file", "dataset.txt"), ("dev_file", "dev.jsonl"), ("heldout_file", "heldout.jsonl"),
        ("unknown_file", "unknown.txt"), ("unknown_dev_file", "unknown_dev.txt"),
        ("unknown_train_file", "unknown_train.txt"))}


def test_file_backend_unknown_questions_are_never_answered_by_the_data(tmp_path):
    from stages.generate_dataset import evaluation_questions_from_files
    fmt = {"format": "auto", "separator": DEFAULT_SEPARATOR}
    cfg = own_files(tmp_path, "# not in the data\n사장님 이름은?\n")
    trained, _ = read_pairs((tmp_path / "my_dataset.txt").read_bytes(), cfg["file"])
    dev, heldout, unknown = evaluation_questions_from_files(cfg, fmt, trained)
    assert (len(dev), heldout, unknown) == (1, [], {"unknown": ["사장님 이름은?"], "unknown_dev": [],
                                                    "unknown_train": ["문 닫는 시간은?"]})

    cfg = own_files(tmp_path, "빵집 이름은\n가게 이름이 뭐예요?\n사장님 <|question|> 이름은?\n")
    with pytest.raises(DatasetError) as error:
        evaluation_questions_from_files(cfg, fmt, trained)
    unknown_file = cfg["unknown_file"]
    assert str(error.value).splitlines() == [
        f"{unknown_file}:1: unknown question '빵집 이름은' is also a training question ({cfg['file']}:1): the data "
        "answers it, so it is not unknown",
        f"{unknown_file}:2: unknown question '가게 이름이 뭐예요?' is also a dev question ({cfg['dev_file']}:1): the "
        "data answers it, so it is not unknown",
        f"{unknown_file}:3: marker <|question|> inside the question: '사장님 <|question|> 이름은?'"]
    (tmp_path / "my_unknown.txt").write_text("빵집 이름은\n", encoding="utf-8")
    (tmp_path / "my_dev.jsonl").write_text('{"question": "빵집 이름은?", "answer": "달빛제과입니다."}\n'
                                           '{"question": "가게 이름이 뭐예요?", "answer": "달빛제과입니다."}\n',
                                           encoding="utf-8")
    with pytest.raises(DatasetError) as error:  # the dev file's problem and the unknown file's, in one message
        evaluation_questions_from_files(cfg, fmt, trained)
    assert str(error.value).splitlines() == [
        f"{cfg['dev_file']}:1: dev question '빵집 이름은?' is also a training question ({cfg['file']}:1): dev and "
        "held-out questions are never trained on",
        f"{unknown_file}:1: unknown question '빵집 이름은' is also a training question ({cfg['file']}:1): the data "
        "answers it, so it is not unknown"]


def test_example_files_left_beside_your_own_are_named(tmp_path):
    from stages.generate_dataset import EXAMPLE_DIGESTS, FILE_KEYS, example_digest, examples_left
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))["generate_dataset"]
    examples = {key: str(REPO / params[key]) for key in FILE_KEYS}
    changed = [path for key, path in examples.items() if example_digest(path) != EXAMPLE_DIGESTS[key]]
    assert not changed, (f"{changed} differ from the examples EXAMPLE_DIGESTS knows: after changing an example, "
                         "write its new sha256 there (with your own data in them, this test does not apply)")
    assert examples_left(examples) == []  # trying the example as it is
    own = own_files(tmp_path, "사장님 이름은?\n")
    assert examples_left(own) == []  # all your own
    mixed = {**own, "unknown_file": examples["unknown_file"], "unknown_dev_file": examples["unknown_dev_file"]}
    [warning] = examples_left(mixed)
    assert warning.startswith(f"{examples['unknown_file']}, {examples['unknown_dev_file']} are still the example "
                              f"(questions about its island, 별무리섬) beside your own {own['file']}, ")
    assert warning.endswith("(generate_dataset.unknown_file, unknown_dev_file).")
    # Emptying the example dev file to skip it also needs two settings: said before any training.
    [warning] = examples_left({**own, "dev_file": examples["dev_file"]})
    assert warning.endswith("(generate_dataset.dev_file; no dev questions also needs finetune.select_epoch: last "
                            "and interpolate.weights: [1.0]).")


def test_questions_that_differ_only_in_case_spaces_or_width_are_one_question(tmp_path):
    """A space before ?, capitals or a full-width ？ do not make a trained question unknown, dev or a
    refusal to train: each would score (or contradict) a memorised string."""
    from stages.generate_dataset import evaluation_questions_from_files
    fmt = {"format": "auto", "separator": DEFAULT_SEPARATOR}
    cfg = own_files(tmp_path, "빵집 이름은 ?\n")
    (tmp_path / "my_dataset.txt").write_text("빵집 이름은? | 달빛제과입니다.\nWho founded Zorp? | Ann did.\n",
                                             encoding="utf-8")
    (tmp_path / "my_dev.jsonl").write_text('{"question": "who founded  zorp？", "answer": "Ann did."}\n',
                                           encoding="utf-8")
    (tmp_path / "my_unknown_train.txt").write_text("ＷＨＯ founded Zorp\n", encoding="utf-8")
    trained, _ = read_pairs((tmp_path / "my_dataset.txt").read_bytes(), cfg["file"])
    with pytest.raises(DatasetError) as error:
        evaluation_questions_from_files(cfg, fmt, trained)
    assert str(error.value).splitlines() == [
        f"{cfg['dev_file']}:1: dev question 'who founded  zorp？' is also a training question ({cfg['file']}:2): "
        "dev and held-out questions are never trained on",
        f"{cfg['unknown_file']}:1: unknown question '빵집 이름은 ?' is also a training question ({cfg['file']}:1): "
        "the data answers it, so it is not unknown",
        f"{cfg['unknown_train_file']}:1: unknown question 'ＷＨＯ founded Zorp' is also a training question "
        f"({cfg['file']}:2): the data answers it, so it is not unknown"]
    with pytest.raises(DatasetError, match=r":2: question 'what is x' is also at .*:1"):
        read_pairs(b"What is X? | A.\nwhat is x | B.\n", "d.txt")


def test_a_forced_dataset_format_leaves_jsonl_dev_and_held_out_files_jsonl(tmp_path):
    from stages.generate_dataset import evaluation_questions_from_files
    cfg = own_files(tmp_path, "사장님 이름은?\n")
    (tmp_path / "my_dataset.txt").write_text("빵집 이름은?\t달빛제과입니다.\n", encoding="utf-8")
    fmt = {"format": "separator", "separator": "\t"}  # a tab-separated dataset: auto looks for " | "
    trained, _ = read_pairs((tmp_path / "my_dataset.txt").read_bytes(), cfg["file"], fmt["format"], fmt["separator"])
    dev, heldout, _ = evaluation_questions_from_files(cfg, fmt, trained)
    assert dev == [{"question": "가게 이름이 뭐예요?", "answer": "달빛제과입니다."}] and heldout == []
    # Any other file is read in the format forced: a dev file in it too.
    (tmp_path / "dev.txt").write_text("가게 이름이 뭐예요?\t달빛제과입니다.\n", encoding="utf-8")
    dev, _, _ = evaluation_questions_from_files({**cfg, "dev_file": str(tmp_path / "dev.txt")}, fmt, trained)
    assert dev == [{"question": "가게 이름이 뭐예요?", "answer": "달빛제과입니다."}]


def test_the_shipped_unknown_file_is_not_answered_by_the_shipped_dataset():
    from stages.generate_dataset import evaluation_questions_from_files
    repo = Path(__file__).resolve().parents[1]
    params = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))
    cfg = {k: str(repo / v) for k, v in params["generate_dataset"].items() if k.endswith("file")}
    trained, _ = read_pairs((repo / params["generate_dataset"]["file"]).read_bytes(), cfg["file"],
                            params["dataset"]["format"], params["dataset"]["separator"])
    assert len(evaluation_questions_from_files(cfg, params["dataset"], trained)[2]["unknown"]) >= 3


def test_template_backend_lists_the_answers_trained_for_each_fact():
    """data/answer_variants.jsonl: the answers actually paired with a fact's questions, for facts
    trained with more than one (what exact_match_any_answer accepts)."""
    from stages.generate_dataset import from_template
    fmt = {"format": "auto", "separator": " \\| "}
    facts = [{"answer": "A1.", "answers": ["A2.", "A3."], "questions": ["q1?", "q2?"]},
             {"answer": "B1.", "answers": ["B2."], "questions": ["q3?"]}]
    _, report, variants = from_template(facts, fmt, 0, True)
    assert report["accepted"] == 3
    assert variants == [{"answers": ["A1.", "A2."]}]  # A3 is never trained; B has one trained answer
    assert from_template(facts, fmt, 0, False)[2] == []


def test_your_own_pairs_keep_their_answers_and_added_phrasings_take_the_wordings_in_turn():
    """generate_dataset.spread_answers: two own questions with one answer both keep it; the phrasings
    added after them take its wordings in turn, then the answer itself; a wording without a phrasing
    left is counted unused."""
    from stages.generate_dataset import spread_answers
    own = [{"question": "Q1", "answer": "A"}, {"question": "Q2", "answer": "A"}, {"question": "Q3", "answer": "B"}]
    added = [{"question": f"Q1 reworded {i}", "answer": "A"} for i in range(3)]
    pairs, trained, unused = spread_answers(own + added, len(own), {"A": ["A1", "A2"], "B": ["B1"]})
    assert [p["answer"] for p in pairs] == ["A", "A", "B", "A1", "A2", "A"]
    assert [p["question"] for p in pairs] == [p["question"] for p in own + added]
    assert trained == [{"answers": ["A", "A1", "A2"]}]
    assert unused == 1  # B1: no phrasing of B was added
