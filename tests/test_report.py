"""The evaluation report: headline numbers, honest sentences, marks, escaping, the embedded PNG (no
model); the unknown-question probe's block; the summary `make run` prints."""

import base64
import re

import pandas as pd
import pytest

from llm_fft import report as report_module
from llm_fft.report import ReportInputError, chat_baseline_sentences, loss_curve_png, report_html, report_markdown
from llm_fft.summary import data_sentences, summary_lines

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def metrics(exact, contains, f1, key, nll, ppl, eos, tokens):
    return {"questions": 3, "exact_match": exact, "contains_answer": contains, "char_f1": f1,
            "states_key_fact": key, "answer_nll": nll, "answer_perplexity": ppl, "ended_with_eos": eos,
            "mean_generated_tokens": tokens}


# Sets deliberately out of reading order: the report must still show trained, heldout, retention.
BEFORE = {"retention": {"prompts": 2, "answers_changed": 0, "text_nll": 2.1, "text_perplexity": 8.2},
          "heldout": metrics(0.0, 0.0, 0.2, 0.0, 1.7, 5.47, 0.0, 83.0),
          "trained": metrics(0.0, 0.0, 0.21, 0.0, 1.61, 5.0, 0.0, 83.0)}
AFTER = {"retention": {"prompts": 2, "answers_changed": 1, "text_nll": 2.5, "text_perplexity": 12.18},
         "heldout": metrics(0.0, 0.0, 0.4, 0.3333, 1.9, 6.69, 1.0, 30.0),
         "trained": metrics(0.6667, 1.0, 0.95, 1.0, 0.0039, 1.0039, 1.0, 40.0)}

QUESTIONS = [  # set, id, question, expected, key fact
    ("trained", "t1", "별무리섬의 인구는 몇 명인가요?", "별무리섬에는 모두 312명이 살고 있습니다.", "312명"),
    ("trained", "t2", "등대의 높이는?", "높이는 27 m | 90 ft입니다.", "27 m"),
    ("trained", "t3", "특산물은?", "달빛귤입니다.", "달빛귤"),
    ("heldout", "h1", "섬에 사는 사람은 몇 명?", "별무리섬에는 모두 312명이 살고 있습니다.", "312명"),
    ("heldout", "h2", "등대는 얼마나 높아?", "높이는 27 m | 90 ft입니다.", "27 m"),
    ("heldout", "h3", "무엇이 유명해?", "달빛귤입니다.", "달빛귤"),
    ("retention", "r1", "The capital of France is", "", ""),
    ("retention", "r2", "1 + 1 =", "", ""),
]
# generated, exact_match, contains_answer, states_key_fact
BEFORE_ANSWERS = [("<|answer|> <|answer|>", False, False, False), ("첫 줄\n둘째 줄", False, False, False),
                  ("모릅니다", False, False, False), ("<|answer|>", False, False, False),
                  ("등대", False, False, False), ("몰라요", False, False, False),
                  ("Paris.", False, False, False), ("2", False, False, False)]
AFTER_ANSWERS = [("별무리섬에는 모두 312명이 살고 있습니다.", True, True, True),
                 ("높이는 27 m | 90 ft입니다.", True, True, True),
                 ("특산물은 달빛귤입니다.", False, True, True),
                 ("312명이 삽니다.", False, False, True),
                 ("<script>alert(1)</script>", False, False, False),
                 ("별무리섬은 제주도 남쪽에 있습니다.", False, False, False),
                 ("Paris.", False, False, False), ("달빛귤입니다.", False, False, False)]


def answer_table(answers):
    rows = []
    for (set_name, id_, question, expected, key_fact), (generated, exact, contains, key) in zip(QUESTIONS, answers):
        rows.append({"set": set_name, "id": id_, "question": question, "expected": expected, "key_fact": key_fact,
                     "generated": generated, "exact_match": exact, "contains_answer": contains,
                     "char_f1": 1.0 if exact else 0.1, "states_key_fact": key, "ended_with_eos": True,
                     "generated_tokens": 10, "answer_nll": float("nan") if set_name == "retention" else 0.5})
    return pd.DataFrame(rows)


@pytest.fixture
def tables():
    return answer_table(BEFORE_ANSWERS), answer_table(AFTER_ANSWERS)


@pytest.fixture
def loss_tsv(tmp_path):
    path = tmp_path / "loss.tsv"  # DVCLive's layout, timestamp included
    path.write_text("timestamp\tstep\tloss\n1\t0\t1.5\n2\t1\t0.9\n3\t2\t0.2\n4\t3\t0.05\n")
    return path


@pytest.fixture
def heldout_tsv(tmp_path):
    path = tmp_path / "answer_nll.tsv"
    path.write_text("timestamp\tstep\tanswer_nll\n1\t1\t1.8\n3\t3\t1.9\n")
    return path


def test_headline_numbers_and_signed_changes(tables):
    markdown = report_markdown(BEFORE, AFTER, *tables)
    assert "| trained questions | questions | 3 | 3 | +0 |" in markdown
    assert "|  | exact_match | 0.0000 | 0.6667 | +0.6667 (better) |" in markdown
    # Lower is better for the loss: a fall is an improvement, a rise on held-out data is not.
    assert "|  | answer_nll | 1.6100 | 0.0039 | -1.6061 (better) |" in markdown
    assert "| held-out paraphrases (test) | questions | 3 | 3 | +0 |" in markdown
    assert "|  | answer_nll | 1.7000 | 1.9000 | +0.2000 (worse) |" in markdown
    assert "|  | answers_changed | 0 | 1 | +1 (worse) |" in markdown
    assert "|  | mean_generated_tokens | 83.0000 | 40.0000 | -43.0000 |" in markdown  # no better side
    html = report_html(BEFORE, AFTER, *tables, b"png")
    assert '<span class="better">+0.6667 (better)</span>' in html
    assert '<span class="worse">+0.2000 (worse)</span>' in html
    # Reading order, whatever the dicts' order.
    for page in (markdown, html):
        assert page.index("trained questions") < page.index("held-out paraphrases") < page.index("retention (")


def test_summary_sentences_are_computed_and_honest(tables):
    html = report_html(BEFORE, AFTER, *tables, b"png")
    assert ("<li>Trained questions: 3 of 3 answers (100%) were right after fine-tuning (2 exact, 1 "
            "containing the answer or stating the key fact), up from 0 before — high:") in html
    assert ("<li>Held-out paraphrases (test): 1 of 3 answers (33%) were right after fine-tuning (0 exact, 1 "
            "containing the answer or stating the key fact), up from 0 before — low: the model mostly memorised "
            "the training strings rather than the facts.</li>") in html
    assert ("<li>Retention (general text and prompts): 1 of 2 general prompts got a different answer after "
            "fine-tuning; text_nll went from 2.1000 to 2.5000 (+19%) — general text got harder for the model: "
            "some general skill was lost.</li>") in html
    assert "- Held-out paraphrases (test): 1 of 3 answers (33%)" in report_markdown(BEFORE, AFTER, *tables)


def test_low_trained_set_is_not_called_memorised(tables):
    before_table, after_table = tables
    after_table.loc[after_table["set"] == "trained", ["exact_match", "contains_answer", "states_key_fact"]] = False
    html = report_html(BEFORE, AFTER, before_table, after_table, b"png")
    assert "Trained questions: 0 of 3 answers (0%) were right after fine-tuning" in html
    assert "the same as 0 before — low: the model did not learn to answer these." in html
    assert "— low: the model did not learn to answer these.</li>\n<li>Retention" in html  # held-out too


def test_middle_share_is_called_partial(tables):
    before_table, after_table = tables
    after_table.loc[after_table["id"] == "h3", "states_key_fact"] = True
    html = report_html(BEFORE, AFTER, before_table, after_table, b"png")
    assert ("Held-out paraphrases (test): 2 of 3 answers (67%) were right after fine-tuning (0 exact, 2 containing "
            "the answer or stating the key fact), up from 0 before — partial: the model answers only some "
            "of these.") in html
    assert html.count('<tr class="wrong">') == 1


def test_wrong_and_changed_rows_stand_out(tables):
    markdown = report_markdown(BEFORE, AFTER, *tables)
    wrong_rows = [line for line in markdown.splitlines() if line.startswith("| ❌ |")]
    assert len(wrong_rows) == 2 and "무엇이 유명해?" in wrong_rows[1]
    assert "| ☑️ | 섬에 사는 사람은 몇 명? |" in markdown
    assert "| ✅ | 별무리섬의 인구는 몇 명인가요? |" in markdown
    assert "| 🔁 | 1 + 1 = | — | 2 | 달빛귤입니다. |" in markdown
    html = report_html(BEFORE, AFTER, *tables, b"png")
    assert html.count('<tr class="wrong">') == 2
    assert html.count('<tr class="changed">') == 1 and html.count('<tr class="unchanged">') == 1
    assert '<tr class="wrong"><td>❌</td><td>무엇이 유명해?</td>' in html
    assert "tr.wrong td { background:" in html


def test_markdown_escapes_cells(tables):
    markdown = report_markdown(BEFORE, AFTER, *tables)
    assert "높이는 27 m \\| 90 ft입니다." in markdown
    assert "| 첫 줄<br>둘째 줄 |" in markdown
    assert "\\<script>alert(1)\\</script>" in markdown
    assert not re.search(r"(?<!\\)<(?!br>)", markdown)  # no raw HTML but our own <br>
    assert "(key fact: **312명**)" in markdown
    # Every table row still has exactly its 5 cells: no unescaped pipe split one.
    for line in markdown.splitlines():
        if line.startswith("| ") and "question" not in line and "metric" not in line:
            assert len(re.findall(r"(?<!\\)\|", line)) == 6, line


def test_html_is_self_contained_and_escaped(tables, loss_tsv):
    png = loss_curve_png(loss_tsv)
    html = report_html(BEFORE, AFTER, *tables, png)
    encoded = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html).group(1)
    assert base64.b64decode(encoded) == png
    assert re.findall(r"(?:src|href)=", html) == ["src="]  # the data URI, nothing else
    assert "http" not in html and "<link" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>" not in html
    assert "&lt;|answer|&gt; &lt;|answer|&gt;" in html
    assert "별무리섬에는 모두 312명이 살고 있습니다." in html and '<meta charset="utf-8">' in html


def test_how_the_model_was_chosen_is_its_own_section(tables, loss_tsv):
    choices = ["Epoch kept: 3 (lowest dev answer loss).", "Interpolation weight: 0.7 <chosen on dev>."]
    markdown = report_markdown(BEFORE, AFTER, *tables, choices=choices)
    assert "## How the model was chosen\n\n- Epoch kept: 3 (lowest dev answer loss).\n" in markdown
    assert "- Interpolation weight: 0.7 \\<chosen on dev>." in markdown
    page = report_html(BEFORE, AFTER, *tables, loss_curve_png(loss_tsv), choices=choices)
    assert "<li>Interpolation weight: 0.7 &lt;chosen on dev&gt;.</li>" in page
    assert "How the model was chosen" not in report_markdown(BEFORE, AFTER, *tables)  # nothing to say: no section


def test_thin_data_is_said_in_the_report_and_at_the_end_of_make_run(tables, loss_tsv):
    """generate_dataset's coverage (metrics/dataset.json) becomes the report's data section and make
    run's last lines: the counts, then every warning."""
    dataset = {"coverage": {"facts": 8, "facts_with_one_phrasing": 8, "phrasings_per_fact": {"min": 1, "median": 1.0,
                                                                                           "max": 1},
                            "facts_with_several_answers": 0, "facts_with_statements": 0, "facts_with_dev_questions": 8,
                            "facts_with_heldout_questions": 8, "warnings": ["8 of 8 facts have one training phrasing."]}}
    data = data_sentences(dataset)
    assert data == ["8 facts, 1 to 1 training phrasings each (median 1); 0 with several answer sentences, 0 with "
                    "statements; 8 asked by dev and 8 by held-out questions (metrics/dataset.json coverage).",
                    "8 of 8 facts have one training phrasing."]
    assert "## The training data\n\n- 8 facts, 1 to 1" in report_markdown(BEFORE, AFTER, *tables, data=data)
    assert "<li>8 of 8 facts have one training phrasing.</li>" in report_html(BEFORE, AFTER, *tables,
                                                                             loss_curve_png(loss_tsv), data=data)
    assert "The training data" not in report_markdown(BEFORE, AFTER, *tables)
    assert "Data warning: 8 of 8 facts have one training phrasing." in summary_lines(BEFORE, AFTER, dataset=dataset)
    assert not any("Data warning" in line for line in summary_lines(BEFORE, AFTER, dataset={}))
    nothing_asked = {"coverage": {"facts": 0, "warnings": ["No dev or held-out question asks for a trained fact."]}}
    assert data_sentences(nothing_asked) == ["No dev or held-out question asks for a trained fact."]
    assert "Data warning: No dev or held-out question asks for a trained fact." in summary_lines(
        BEFORE, AFTER, dataset=nothing_asked)


def test_markdown_links_the_image(tables):
    assert "![training loss per optimizer step](plots/loss.png)" in report_markdown(
        BEFORE, AFTER, *tables, loss_image="plots/loss.png")


def test_outputs_are_deterministic(tables):
    assert report_markdown(BEFORE, AFTER, *tables) == report_markdown(BEFORE, AFTER, *tables)
    assert report_html(BEFORE, AFTER, *tables, b"x") == report_html(BEFORE, AFTER, *tables, b"x")


def test_tables_read_back_from_csv_give_the_same_report(tables, tmp_path):
    # The answer CSVs leave empty strings as NaN; the report must not print "nan" for them.
    read_back = []
    for i, table in enumerate(tables):
        table.to_csv(tmp_path / f"{i}.csv", index=False)
        read_back.append(pd.read_csv(tmp_path / f"{i}.csv"))
    assert read_back[1]["key_fact"].isna().sum() == 2
    assert report_markdown(BEFORE, AFTER, *read_back) == report_markdown(BEFORE, AFTER, *tables)


def test_loss_png_is_a_deterministic_png(loss_tsv, heldout_tsv):
    first = loss_curve_png(loss_tsv)
    assert first.startswith(PNG_SIGNATURE)
    assert loss_curve_png(loss_tsv) == first
    assert b"tEXt" not in first and b"tIME" not in first  # no software version or time stamp
    with_heldout = loss_curve_png(loss_tsv, heldout_tsv)
    assert with_heldout.startswith(PNG_SIGNATURE) and with_heldout != first
    assert loss_curve_png(loss_tsv, heldout_tsv) == with_heldout


def test_loss_tsv_without_timestamp_is_read(tmp_path):
    path = tmp_path / "loss.tsv"  # the layout committed in metrics/finetune today
    path.write_text("step\tloss\n0\t1.4\n1\t1.2\n")
    assert loss_curve_png(path).startswith(PNG_SIGNATURE)


def test_bad_loss_tsv_names_file_and_line(tmp_path):
    path = tmp_path / "loss.tsv"
    path.write_text("step\tloss\n0\t1.4\n1\tx\n2\t\n")
    with pytest.raises(ReportInputError) as error:
        loss_curve_png(path)
    assert str(error.value) == f"{path}:3: loss is 'x', not a number\n{path}:4: loss is nan, not a number"
    path.write_text("step\tvalue\n0\t1.4\n")
    with pytest.raises(ReportInputError, match=r"loss.tsv:1: missing column\(s\) loss; header is step, value"):
        loss_curve_png(path)


def test_every_input_problem_is_reported_at_once(tables):
    before_table, after_table = tables
    after = {**AFTER, "trained": {k: v for k, v in AFTER["trained"].items() if k != "char_f1"}}
    with pytest.raises(ReportInputError) as error:
        report_markdown(BEFORE, after, before_table, after_table)
    assert "trained.char_f1 is only in before" in str(error.value)
    swapped = after_table.iloc[[1, 0, *range(2, len(after_table))]].reset_index(drop=True)
    swapped.loc[7, "set"] = "mystery"
    with pytest.raises(ReportInputError) as error:
        report_html(BEFORE, AFTER, before_table, swapped, b"png")
    message = str(error.value)
    assert message.startswith("report inputs: 5 problem(s):")
    assert "row 0: before is trained/t1, after is trained/t2" in message
    assert "row 1: before is trained/t2, after is trained/t1" in message
    assert "row 7: before is retention/r2, after is mystery/r2" in message
    assert "after_table row 7 (id 'r2'): set 'mystery' has no metrics" in message
    assert "after_table row 7 (id 'r2'): empty expected answer in set 'mystery'" in message


# The unknown-question probe: questions the data does not answer; (question, before, after), each
# answer with its abstained flag as the evaluation wrote it.
UNKNOWN = [("별무리섬의 면적은?", ("모르겠습니다.", True), ("12제곱킬로미터입니다.", False)),
           ("교장 선생님 이름은?", ("알 수 없습니다", True), ("윤가람입니다.", False)),
           ("자동차는 몇 대?", ("세 대입니다.", False), ("잘 모르겠어요.", True)),
           ("등대는 몇 년에 세워졌나요?", ("", False), ("", False))]
UNKNOWN_BEFORE = {"questions": 4, "abstained": 0.5, "invented": 0.25, "mean_generated_tokens": 6.0}
UNKNOWN_AFTER = {"questions": 4, "abstained": 0.25, "invented": 0.5, "mean_generated_tokens": 9.0}


def with_unknown(table, after):
    """The table with the unknown set's rows between held-out and retention, as evaluate_model writes them."""
    rows = []
    for i, (question, before_answer, after_answer) in enumerate(UNKNOWN):
        generated, abstained = after_answer if after else before_answer
        rows.append({"set": "unknown", "id": i, "question": question, "expected": "", "key_fact": "",
                     "generated": generated, "abstained": abstained, "ended_with_eos": True, "generated_tokens": 5})
    rows = pd.DataFrame(rows)
    retention = table["set"] == "retention"
    return pd.concat([table[~retention], rows, table[retention]], ignore_index=True)


@pytest.fixture
def unknown_inputs(tables):
    return ({**BEFORE, "unknown": UNKNOWN_BEFORE}, {**AFTER, "unknown": UNKNOWN_AFTER},
            with_unknown(tables[0], after=False), with_unknown(tables[1], after=True))


def test_unknown_questions_get_a_sentence_a_headline_and_their_own_marks(unknown_inputs):
    markdown = report_markdown(*unknown_inputs)
    # Inventing more is worse, abstaining less is worse.
    assert "| unknown questions (not in the data) | questions | 4 | 4 | +0 |" in markdown
    assert "|  | abstained | 0.5000 | 0.2500 | -0.2500 (worse) |" in markdown
    assert "|  | invented | 0.2500 | 0.5000 | +0.2500 (worse) |" in markdown
    assert ("- Unknown questions (not in the data): 2 of 4 answers invented something after fine-tuning, 1 before "
            "(1 said they did not know after, 2 before); the data does not answer these, so any answer other than a "
            "refusal is invented — fine-tuning made the model invent more.") in markdown
    assert "### Unknown questions (not in the data)\n\n| abstained? | question |" in markdown
    assert "| ❌ | 별무리섬의 면적은? | — | 모르겠습니다. | 12제곱킬로미터입니다. |" in markdown
    assert "| ✅ | 자동차는 몇 대? | — | 세 대입니다. | 잘 모르겠어요. |" in markdown
    assert "| ∅ | 등대는 몇 년에 세워졌나요? | — |  |  |" in markdown
    page = report_html(*unknown_inputs, b"png")
    assert page.count('<tr class="wrong">') == 2 + 2  # the two wrong held-out answers and the two invented ones
    assert '<tr class="wrong"><td>❌</td><td>교장 선생님 이름은?</td>' in page
    assert '<tr class="abstained"><td>✅</td><td>자동차는 몇 대?</td>' in page
    # After the held-out set, before retention, in the headline and among the questions.
    for text, heading in ((markdown, "### "), (page, "<h3>")):
        assert text.index("held-out paraphrases") < text.index("unknown questions (not in") < text.index("retention (")
        assert text.index(f"{heading}Held-out") < text.index(f"{heading}Unknown") < text.index(f"{heading}Retention")


def test_unknown_sentence_says_when_fine_tuning_invents_less(unknown_inputs):
    before, after, before_table, after_table = unknown_inputs
    before_table, after_table = after_table, before_table  # the same answers the other way round
    markdown = report_markdown({**before, "unknown": UNKNOWN_AFTER}, {**after, "unknown": UNKNOWN_BEFORE},
                               before_table, after_table)
    assert ("1 of 4 answers invented something after fine-tuning, 2 before (2 said they did not know after, 1 "
            "before)") in markdown
    assert "— fine-tuning made the model invent less." in markdown
    assert "|  | invented | 0.5000 | 0.2500 | -0.2500 (better) |" in markdown


def test_unknown_rows_need_their_abstained_flag(unknown_inputs):
    before, after, before_table, after_table = unknown_inputs
    broken = after_table.copy()
    broken.loc[broken["set"] == "unknown", "abstained"] = None
    with pytest.raises(ReportInputError) as error:
        report_markdown(before, after, before_table, broken)
    assert "after_table row 6 (id '0'): abstained is None, not True/False" in str(error.value)
    with pytest.raises(ReportInputError, match=r"before_table: missing column abstained \(set 'unknown' has rows\)"):
        report_markdown(before, after, before_table.drop(columns="abstained"), after_table)


def test_unknown_rows_read_back_from_csv_give_the_same_report(unknown_inputs, tmp_path):
    before, after, *tables = unknown_inputs
    read_back = []
    for i, table in enumerate(tables):
        table.to_csv(tmp_path / f"{i}.csv", index=False)
        read_back.append(pd.read_csv(tmp_path / f"{i}.csv"))
    assert report_markdown(before, after, *read_back) == report_markdown(before, after, *tables)


def test_summary_prints_the_invented_share_when_the_probe_ran():
    before = {"trained": {"questions": 3, "exact_match": 0.0, "char_f1": 0.2}, "unknown": UNKNOWN_BEFORE}
    after = {"trained": {"questions": 3, "exact_match": 1.0, "char_f1": 1.0}, "unknown": UNKNOWN_AFTER}
    lines = summary_lines(before, after)
    assert (f"  {'unknown questions (4)':<34} abstained {UNKNOWN_BEFORE['abstained']:.3f} -> "
            f"{UNKNOWN_AFTER['abstained']:.3f}   invented 0.250 -> 0.500") in lines
    assert not any("unknown" in line for line in summary_lines({"trained": before["trained"]},
                                                               {"trained": after["trained"]}))


def test_summary_shows_right_abstained_wrong_general_facts_kept_and_the_gate():
    keyed = {"questions": 4, "right": 0.5, "abstained": 0.25, "wrong": 0.25}
    before = {"heldout": {**keyed, "right": 0.0, "wrong": 1.0, "abstained": 0.0}, "general": {"prompts": 5, "right": 0.8}}
    after = {"heldout": keyed, "general": {"prompts": 5, "right": 0.6, "right_before": 4, "kept": 0.75, "lost": 1},
             "gate": {"threshold": 1.25, "chosen_on_questions": 8}}
    lines = summary_lines(before, after)
    assert (f"  {'held-out paraphrases, test (4)':<34} right 0.000 -> 0.500   abstained 0.000 -> 0.250   "
            "wrong 1.000 -> 0.250") in lines
    assert any(line.startswith(f"  {'general facts kept':<34} 0.750 (3 of the 4 the base model got right") for line in lines)
    assert ("Confidence gate, chosen on dev for each model: after: answers with their own NLL above 1.250 nats/token "
            "refused (metrics/*.json gate.ungated: the shares without it)") in lines
    before["gate"] = {"threshold": -1.0}
    assert summary_lines(before, after)[-2].startswith("Confidence gate, chosen on dev for each model: before: every "
                                                       "answer refused; after: answers")


def test_lost_general_facts_are_named_in_the_summary_sentence():
    before = pd.DataFrame({"set": "general", "id": [0, 1, 2], "question": ["The capital of France is", "A", "B"],
                           "generated": ["Paris.", "x", "y"], "right": [True, True, False]})
    after = before.assign(generated=["the capital of the United States", "x", "y"], right=[False, True, True])
    sentence = report_module._general_sentence("general", list(before.itertuples()), list(after.itertuples()))
    assert "the base model got 2 of 3 right; after fine-tuning 1 of those 2 still are (general facts kept 50%)" in sentence
    assert "lost: 'The capital of France is' → 'the capital of the United States' (was 'Paris.')" in sentence


def test_chat_template_baseline_is_compared_in_its_own_section(unknown_inputs, loss_tsv):
    """The base model asked through its own chat template: counts beside the pipeline's prompt's, before
    and after; a model without a template says why it was not measured."""
    before, after, before_table, after_table = unknown_inputs
    chat = {"heldout": {**metrics(0.0, 0.0, 0.3, 0.6667, 1.5, 4.5, 1.0, 20.0)},
            "unknown": {"questions": 4, "abstained": 0.75, "invented": 0.25, "mean_generated_tokens": 8.0}}
    sentences = chat_baseline_sentences(before, chat, after)
    assert sentences == [
        "Held-out paraphrases (test): the base model stated the key fact in 2 of 3 answers through its chat "
        "template, 0 on the pipeline's prompt; 1 after fine-tuning.",
        "Unknown questions (not in the data): through its chat template the base model invented an answer to 1 "
        "of 4 and said it did not know 3 times (1 and 2 on the pipeline's prompt)."]
    markdown = report_markdown(before, after, before_table, after_table, chat_before=sentences)
    assert "## Before, on the base model's own chat template\n\n- Held-out paraphrases (test): the base" in markdown
    page = report_html(before, after, before_table, after_table, loss_curve_png(loss_tsv), chat_before=sentences)
    assert "<h2>Before, on the base model&#x27;s own chat template</h2>" in page
    assert chat_baseline_sentences(before, {"skipped": "the base model has no chat template"}, after) == [
        "Not measured: the base model has no chat template."]
    assert "chat template" not in report_markdown(before, after, before_table, after_table)  # no section


def test_a_refusal_on_a_held_out_question_is_marked_abstained_not_wrong():
    table = pd.DataFrame({"set": "heldout", "id": [0, 1], "question": ["Q?", "R?"], "expected": ["A.", "B."],
                          "key_fact": ["A", "B"], "generated": ["모르겠습니다.", "C."], "verdict": ["abstained", "wrong"],
                          "exact_match": False, "contains_answer": False, "states_key_fact": False})
    rows = report_module.question_rows(table, table)["heldout"]
    assert [(r[0], r[1]) for r in rows] == [("❔", "abstained"), ("❌", "wrong")]


def test_a_gated_answer_shows_what_the_model_would_have_said():
    row = pd.DataFrame({"generated": ["모르겠습니다."], "gated": [True], "ungated": ["윤가람입니다."]}).iloc[0]
    assert report_module._shown_answer(row) == "모르겠습니다. [gate; the model's answer: 윤가람입니다.]"
    assert report_module._shown_answer(row.copy().replace({True: False})) == "모르겠습니다."


def test_the_report_says_how_many_dev_questions_made_each_choice():
    from stages.report import how_chosen
    epoch, weight, _ = how_chosen({"kept_epoch": 5, "kept_by": "lowest dev answer loss", "kept_dev_answer_nll": 0.09},
                                  {"chosen_weight": 0.9, "chosen_on": "8 dev questions (data/dev_qa.jsonl): ..."}, 8)
    assert epoch == "Epoch kept: 5 (lowest dev answer loss, 0.09 nats/token on 8 dev questions)."
    assert "chosen on 8 dev questions" in weight


def seed_record(seeds, **means):
    return {"seeds": seeds, "commit": "abc1234", "summary": {key.replace("__", "."): {"mean": m, "min": m - 0.1, "max": m + 0.1}
                                        for key, m in means.items()}}


def test_korean_pairs_get_the_two_embedded_models_compared_from_the_seed_records():
    from llm_fft import summary
    records = {"SmolLM2-135M": seed_record([123, 1, 2], final__gate__ungated__heldout__right=0.5),
               "Gemma 3 270M": seed_record([123, 1], final__gate__ungated__heldout__right=0.9)}
    korean = summary.hangul_share(["등대의 높이는?", "27미터입니다. (27 m)"])
    assert korean == pytest.approx(11 / 12)  # 11 syllables, one Latin letter
    lines = summary.profile_advice("embedded", korean, True, records)
    assert lines[0] == ("Korean profile: your pairs are 92% Korean. On the project's Korean facts with the default levers "
                        "(metrics/seeds/lr5e-5.json, seeds 123 1 2, commit abc1234; metrics/seeds/ko-honest.json, "
                        "seeds 123 1, commit abc1234), mean (min-max):")
    assert lines[1] == (f"  {'held-out right, without the gate':<40} SmolLM2-135M 0.500 (0.400-0.600)   "
                        "Gemma 3 270M 0.900 (0.800-1.000)")
    assert len(lines) == 3 and "make run PROFILE=ko" in lines[2] and "make setup" not in lines[2]  # no other metric
    assert "make setup PROFILE=ko" in summary.profile_advice("embedded", korean, False, records)[-1]
    # Nothing to advise: already on the profile, another model (kanana), English pairs, or a record missing.
    assert summary.profile_advice(summary.KO_MODEL, korean, True, records) == []
    assert summary.profile_advice("kakaocorp/kanana-nano-2.1b-base", korean, True, records) == []
    assert summary.profile_advice("embedded", summary.hangul_share(["How tall is it?", "27 m (27미터)"]), True, records) == []
    assert summary.profile_advice("embedded", korean, True, {"SmolLM2-135M": records["SmolLM2-135M"]}) == []


def test_the_summary_spells_the_profile_and_params_file_as_the_pipeline_does():
    from llm_fft import model, params, summary
    assert (summary.KO_PACKAGE, summary.KO_MODEL, summary.DEFAULT_MODEL, summary.PARAMS_FILE) == (
        model.GEMMA_PACKAGE, model.EMBEDDED_GEMMA, model.EMBEDDED, params.PARAMS_FILE)
    assert all(path.exists() for path in summary.KO_COMPARISON.values())  # committed records


def test_the_report_states_the_gate_rule_with_its_cost():
    from stages.report import gate_sentence
    before = {"gate": {"threshold": -1.0, "chosen_on_questions": 38, "wrong_cost": 0.5}}
    after = {"gate": {"threshold": 0.03, "chosen_on_questions": 38, "wrong_cost": 0.5}}
    assert "by most (right + unknown refused) - 0.5 x (wrong + unknown invented): " in gate_sentence(before, after)[0]
    after["gate"]["wrong_cost"] = 1
    assert "by most (right + unknown refused) - (wrong + unknown invented): " in gate_sentence(before, after)[0]
