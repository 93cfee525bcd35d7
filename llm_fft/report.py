"""The evaluation report: before vs after fine-tuning, as markdown and as one self-contained HTML page.

Inputs (see the evaluation stages): `before` / `after` are {set: {metric: number}} dicts (the
contents of metrics/baseline.json and metrics/final.json); `before_table` / `after_table` are the
per-question DataFrames (same rows, same order) with the columns in TABLE_COLUMNS (and abstained,
when the unknown set has rows); the loss curve comes from the DVCLive TSV files of the finetune stage.

Both pages carry the same content: the headline table (set x metric, before | after | change), one
summary sentence per set computed from the numbers, the loss curve, then every question per set.
Output is deterministic: the same inputs give the same bytes.
"""

import base64
import html
import io
import math
import re
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from llm_fft.metrics import answer_changed, invented

# Sets in the order a reader needs them: what was trained, whether it generalised, whether it invents
# what it was never told, what it cost.
SET_ORDER = ("trained", "dev", "heldout", "unknown", "unknown_dev", "general", "retention")
SET_LABELS = {"trained": "trained questions",
              "dev": "dev paraphrases (chose the settings)",
              "heldout": "held-out paraphrases (test)",
              "unknown": "unknown questions (not in the data)",
              "unknown_dev": "dev unknown questions (chose the confidence gate)",
              "general": "general-knowledge probe (right when the continuation states the key)",
              "retention": "retention (general text and prompts)"}
# Its rows have no expected answer: an answer there is judged by whether fine-tuning changed it.
RETENTION_SET = "retention"
# Its rows have no expected answer either: the data does not answer them, so an answer either says it
# does not know (the table's abstained column) or is invented.
UNKNOWN_SET = "unknown"
UNKNOWN_SETS = (UNKNOWN_SET, "unknown_dev")
# General openings with keys instead of an expected answer: a row is right or not (its right column).
GENERAL_SET = "general"

TABLE_COLUMNS = ("set", "id", "question", "expected", "key_fact", "generated", "exact_match",
                 "contains_answer", "char_f1", "states_key_fact", "ended_with_eos",
                 "generated_tokens", "answer_nll")
BOOL_COLUMNS = ("exact_match", "contains_answer", "states_key_fact", "ended_with_eos")

# Metric names are matched by these words so that a new metric gets the right direction without
# a code change; a metric matching neither (counts, mean_generated_tokens) gets no verdict.
LOWER_IS_BETTER = ("nll", "perplexity", "loss", "changed", "invented", "wrong")
HIGHER_IS_BETTER = ("exact_match", "contains_answer", "f1", "states_key_fact", "ended_with_eos", "right")

# Share of questions right that the summary sentence calls high / low; in between is "partial".
HIGH_SHARE = 0.9
LOW_SHARE = 0.5
# Relative rise of the general-text loss that the retention sentence still calls "held".
RETENTION_NLL_TOLERANCE = 0.05

MARK_EXACT, MARK_PARTLY, MARK_WRONG = "✅", "☑️", "❌"
MARK_UNCHANGED, MARK_CHANGED = "＝", "🔁"
MARK_NO_ANSWER = "∅"
MARK_ABSTAINED = "❔"
LEGEND = (f"{MARK_EXACT} exact match (its answer or another answer trained for the same fact), "
          f"{MARK_PARTLY} contains the expected answer or states the key fact, "
          f"{MARK_WRONG} wrong, {MARK_ABSTAINED} said it does not know (dev and held-out); for unknown "
          f"questions {MARK_EXACT} says it does not know, {MARK_WRONG} "
          f"invented an answer, {MARK_NO_ANSWER} no answer; for retention prompts {MARK_UNCHANGED} same "
          f"answer as before, {MARK_CHANGED} changed by fine-tuning. The mark judges the answer after "
          "fine-tuning.")

TITLE = "Fine-tuning report: before vs after"
# Said when there are no held-out questions (your own data without a held-out file): never borrowed.
NO_HELDOUT = ("Held-out paraphrases: none, so whether the model learned the facts rather than the training "
              "strings was not measured; to measure it, put question/answer pairs it is never trained on in "
              "the file generate_dataset.heldout_file names (data/my_heldout.jsonl) and run dvc repro again.")
CHOICES_HEADING = "How the model was chosen"
CHAT_HEADING = "Before, on the base model's own chat template"
DATA_HEADING = "The training data"


class ReportInputError(ValueError):
    """Report inputs that do not fit the contract; the message lists every problem."""


# ---------------------------------------------------------------- loss curve

def read_metric_tsv(path):
    """One DVCLive metric file as a DataFrame with columns step, value (checked, every problem at once).

    DVCLive names the value column after the file (loss.tsv -> loss); a timestamp column is optional.
    """
    path = Path(path)
    try:
        table = pd.read_csv(path, sep="\t")
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ReportInputError(f"{path}: cannot read the metric file: {e}") from e
    value_column = path.stem
    missing = [c for c in ("step", value_column) if c not in table.columns]
    if missing:
        raise ReportInputError(f"{path}:1: missing column(s) {', '.join(missing)}; "
                               f"header is {', '.join(map(str, table.columns))}")
    problems = []
    for column in ("step", value_column):
        numbers = pd.to_numeric(table[column], errors="coerce")
        for row in table.index[numbers.isna()]:
            problems.append(f"{path}:{row + 2}: {column} is {table[column][row]!r}, not a number")
        table[column] = numbers
    if table.empty:
        problems.append(f"{path}: no rows")
    if problems:
        raise ReportInputError("\n".join(problems))
    return table[["step", value_column]].rename(columns={value_column: "value"})


def loss_curve_png(loss_tsv, dev_tsv=None):
    """The training loss per optimizer step (and the dev answer NLL per epoch, when given) as PNG bytes.

    Deterministic: no timestamp or software version in the PNG metadata, so reruns are byte-identical.
    """
    loss = read_metric_tsv(loss_tsv)
    dev = read_metric_tsv(dev_tsv) if dev_tsv is not None else None
    # Figure + FigureCanvasAgg rather than pyplot: no global backend or figure registry to leak.
    figure = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot(loss["step"], loss["value"], color="tab:blue", linewidth=1.5, label="training loss (per step)")
    if dev is not None:
        axes.plot(dev["step"], dev["value"], color="tab:orange", marker="o", linewidth=1.5,
                  label="dev answer NLL (per epoch)")
    values = pd.concat([loss["value"], dev["value"]]) if dev is not None else loss["value"]
    # The loss falls by orders of magnitude when the facts are memorised; a log axis keeps the tail visible.
    log_scale = bool((values > 0).all())
    if log_scale:
        axes.set_yscale("log")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("nats/token" + (" (log scale)" if log_scale else ""))
    axes.set_title("Training loss" + (" and dev answer NLL" if dev is not None else ""))
    axes.grid(True, which="major", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


# ---------------------------------------------------------------- checking the inputs

def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _text(value):
    """A table cell as text; a CSV's empty cell (read back as NaN) is the empty string."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def _metric_problems(before, after):
    problems = []
    for name, metrics in (("before", before), ("after", after)):
        if not isinstance(metrics, dict) or not all(isinstance(v, dict) for v in metrics.values()):
            problems.append(f"{name}: expected {{set: {{metric: number}}}}, got {str(metrics)[:80]}")
    if problems:
        return problems
    for set_name in sorted(set(before) ^ set(after)):
        problems.append(f"set {set_name!r} is only in {'before' if set_name in before else 'after'}")
    for set_name in [s for s in before if s in after]:
        for metric in sorted(set(before[set_name]) ^ set(after[set_name])):
            where = "before" if metric in before[set_name] else "after"
            problems.append(f"{set_name}.{metric} is only in {where}")
        for name, metrics in (("before", before), ("after", after)):
            for metric, value in metrics[set_name].items():
                if not _is_number(value):
                    problems.append(f"{name}: {set_name}.{metric} is {value!r}, not a number")
    return problems


def _table_problems(before_table, after_table, set_names):
    problems = []
    for name, table in (("before_table", before_table), ("after_table", after_table)):
        missing = [c for c in TABLE_COLUMNS if c not in table.columns]
        if missing:
            problems.append(f"{name}: missing column(s) {', '.join(missing)}")
    if problems:
        return problems
    if len(before_table) != len(after_table):
        problems.append(f"before_table has {len(before_table)} rows, after_table {len(after_table)}: "
                        "both must list the same questions in the same order")
    for row, (b, a) in enumerate(zip(before_table.itertuples(), after_table.itertuples())):
        if (b.set, _text(b.id)) != (a.set, _text(a.id)):
            problems.append(f"row {row}: before is {b.set}/{b.id}, after is {a.set}/{a.id}: "
                            "both tables must list the same questions in the same order")
    for name, table in (("before_table", before_table), ("after_table", after_table)):
        if table["set"].isin(UNKNOWN_SETS).any() and "abstained" not in table.columns:
            problems.append(f"{name}: missing column abstained (set {UNKNOWN_SET!r} has rows)")
            continue
        if (table["set"] == GENERAL_SET).any() and "right" not in table.columns:
            problems.append(f"{name}: missing column right (set {GENERAL_SET!r} has rows)")
            continue
        for row, record in enumerate(table.itertuples()):
            where = f"{name} row {row} (id {_text(record.id)!r})"
            if record.set not in set_names:
                problems.append(f"{where}: set {record.set!r} has no metrics (sets: {', '.join(set_names)})")
            if record.set not in (RETENTION_SET, GENERAL_SET, *UNKNOWN_SETS) and not _text(record.expected).strip():
                problems.append(f"{where}: empty expected answer in set {record.set!r}")
            for column in _flag_columns(record.set):
                # str() covers Python and numpy bools alike, and the strings a CSV reader may leave;
                # states_key_fact is empty (None) in sets whose questions carry no key fact.
                allowed = ("True", "False") + (("None", "", "nan") if column == "states_key_fact" else ())
                if str(getattr(record, column)) not in allowed:
                    problems.append(f"{where}: {column} is {getattr(record, column)!r}, not True/False")
    for set_name in set_names:
        if not (after_table["set"] == set_name).any():
            problems.append(f"set {set_name!r} has metrics but no rows in the tables")
    return problems


def _flag_columns(set_name):
    """The True/False columns a row of this set must have: the retention probe has none (its mark is
    computed), the unknown set only abstained (nothing to match), every other set the scores."""
    return {RETENTION_SET: (), GENERAL_SET: ("right",), **dict.fromkeys(UNKNOWN_SETS, ("abstained",))}.get(
        set_name, BOOL_COLUMNS)


def _check_inputs(before, after, before_table, after_table):
    problems = _metric_problems(before, after)
    if not problems:
        problems = _table_problems(before_table, after_table, list(before))
    if problems:
        raise ReportInputError(f"report inputs: {len(problems)} problem(s):\n"
                               + "\n".join(f"  - {p}" for p in problems))


def _flag(value):
    """A bool cell from a DataFrame or from a CSV read back (numpy bool or the strings True/False)."""
    return str(value) == "True"


# ---------------------------------------------------------------- numbers and sentences

def _ordered_sets(names):
    """Known sets in reading order, then any others in the order given."""
    return [s for s in SET_ORDER if s in names] + [s for s in names if s not in SET_ORDER]


def set_label(set_name):
    """The human name of a set (its own name when unknown)."""
    return SET_LABELS.get(set_name, set_name)


def _heading(set_name):
    label = set_label(set_name)
    return label[0].upper() + label[1:]


def _direction(metric, set_name=None):
    """-1 if lower is better, +1 if higher is better, 0 if the metric has no better side. Abstaining
    is better only where the data has no answer: on a question it answers, a refusal may replace a
    wrong answer (better) or a right one (worse), so there it gets no verdict."""
    if metric == "abstained":
        return 1 if set_name in UNKNOWN_SETS else 0
    if any(word in metric for word in LOWER_IS_BETTER):
        return -1
    if any(word in metric for word in HIGHER_IS_BETTER):
        return 1
    return 0


def _format_value(value):
    if isinstance(value, int):
        return str(value)
    return "nan" if math.isnan(value) else f"{value:.4f}"


def _change(metric, before, after, set_name=None):
    """(signed change as text, 'better' | 'worse' | '') for one metric."""
    if any(isinstance(v, float) and math.isnan(v) for v in (before, after)):
        return "n/a", ""
    if isinstance(before, int) and isinstance(after, int):
        delta, text = after - before, f"{after - before:+d}"
    else:
        delta = round(after - before, 4) + 0.0  # + 0.0 turns -0.0 into 0.0
        text = f"{delta:+.4f}"
    direction = _direction(metric, set_name)
    verdict = "" if delta == 0 else ("better" if delta * direction > 0 else "worse" if direction else "")
    return text, verdict


def headline_rows(before, after):
    """Rows (set, metric, before, after, change, verdict) of the headline table, sets in reading order."""
    rows = []
    for set_name in _ordered_sets(list(before)):
        for metric, old in before[set_name].items():
            new = after[set_name][metric]
            change, verdict = _change(metric, old, new, set_name)
            rows.append((set_name, metric, _format_value(old), _format_value(new), change, verdict))
    return rows


def _answer_mark(row):
    # Word for word its own answer, or another answer trained for the same fact (a table written before
    # answer variants were scored has no such column).
    if _flag(row.exact_match) or _flag(getattr(row, "exact_match_any_answer", None)):
        return MARK_EXACT
    if _flag(row.contains_answer) or _flag(row.states_key_fact):
        return MARK_PARTLY
    return MARK_WRONG


def _changed(before_row, after_row):
    return answer_changed(_text(before_row.generated), _text(after_row.generated))


def _invented(row):
    """Whether an answer to an unknown question invents something (metrics.invented, the evaluations' rule)."""
    return invented(_text(row.generated), _flag(row.abstained))


def _unknown_mark(row):
    if _flag(row.abstained):
        return MARK_EXACT
    return MARK_WRONG if _invented(row) else MARK_NO_ANSWER


def _question_sentence(set_name, before_rows, after_rows, trained_share):
    total = len(after_rows)
    right_after = sum(_answer_mark(r) != MARK_WRONG for r in after_rows)
    exact_after = sum(_answer_mark(r) == MARK_EXACT for r in after_rows)
    right_before = sum(_answer_mark(r) != MARK_WRONG for r in before_rows)
    share = right_after / total
    trend = ("up from" if right_after > right_before else "down from" if right_after < right_before
             else "the same as")
    facts = (f"{_heading(set_name)}: {right_after} of {total} answers ({share:.0%}) were right after "
             f"fine-tuning ({exact_after} exact, {right_after - exact_after} containing the answer or "
             f"stating the key fact), {trend} {right_before} before")
    if share >= HIGH_SHARE:
        verdict = "high"
        if set_name == "trained":
            verdict += (": the model reproduces its training answers, which shows memorisation; "
                        "the held-out paraphrases show whether it learned the facts")
    elif share >= LOW_SHARE:
        verdict = "partial: the model answers only some of these"
    elif trained_share is not None and trained_share >= HIGH_SHARE and set_name != "trained":
        verdict = "low: the model mostly memorised the training strings rather than the facts"
    else:
        verdict = "low: the model did not learn to answer these"
    return f"{facts} — {verdict}."


def _retention_sentence(set_name, before_metrics, after_metrics, before_rows, after_rows):
    total = len(after_rows)
    changed = sum(_changed(b, a) for b, a in zip(before_rows, after_rows))
    parts = [f"{_heading(set_name)}: {changed} of {total} general prompts got a different "
             "answer after fine-tuning"]
    worst_rise = 0.0
    for metric in before_metrics:
        old, new = before_metrics[metric], after_metrics[metric]
        if "nll" not in metric or math.isnan(old) or math.isnan(new) or old <= 0:
            continue
        rise = (new - old) / old
        worst_rise = max(worst_rise, rise)
        parts.append(f"{metric} went from {old:.4f} to {new:.4f} ({rise:+.0%})")
    if worst_rise > RETENTION_NLL_TOLERANCE:
        verdict = "general text got harder for the model: some general skill was lost"
    elif changed:
        verdict = "the general-text loss held but answers changed; read them below"
    else:
        verdict = "general behaviour looks preserved"
    return "; ".join(parts) + f" — {verdict}."


def _unknown_sentence(set_name, before_rows, after_rows):
    total = len(after_rows)
    invented_after, invented_before = sum(map(_invented, after_rows)), sum(map(_invented, before_rows))
    abstained_after = sum(_flag(r.abstained) for r in after_rows)
    abstained_before = sum(_flag(r.abstained) for r in before_rows)
    verdict = ("fine-tuning made the model invent more" if invented_after > invented_before
               else "fine-tuning made the model invent less" if invented_after < invented_before
               else "fine-tuning did not change how often the model invents")
    return (f"{_heading(set_name)}: {invented_after} of {total} answers invented something after fine-tuning, "
            f"{invented_before} before ({abstained_after} said they did not know after, {abstained_before} "
            f"before); the data does not answer these, so any answer other than a refusal is invented "
            f"— {verdict}.")


def _general_sentence(set_name, before_rows, after_rows):
    """General facts kept: of the probe's openings the base model continued right, how many still are,
    and which were lost (the prompt and what it says now)."""
    known = [(b, a) for b, a in zip(before_rows, after_rows) if _flag(b.right)]
    lost = [(b, a) for b, a in known if not _flag(a.right)]
    if not known:
        return (f"{_heading(set_name)}: the base model got none of the {len(after_rows)} openings right, so "
                "nothing here can be lost — measured on nothing.")
    kept = len(known) - len(lost)
    text = (f"{_heading(set_name)}: the base model got {len(known)} of {len(after_rows)} right; after fine-tuning "
            f"{kept} of those {len(known)} still are (general facts kept {kept / len(known):.0%})")
    if not lost:
        return text + " — no general fact the base model knew was lost."
    examples = "; ".join(f"{_text(b.question)!r} → {_text(a.generated)!r} (was {_text(b.generated)!r})"
                         for b, a in lost)
    return text + f" — lost: {examples}."


def summary_sentences(before, after, before_table, after_table):
    """{set: one sentence} computed from the numbers; says low when low, never more than the numbers show."""
    rows = {s: ([], []) for s in before}
    for b, a in zip(before_table.itertuples(), after_table.itertuples()):
        rows[a.set][0].append(b)
        rows[a.set][1].append(a)
    trained_share = None
    if "trained" in rows and rows["trained"][1]:
        trained = rows["trained"][1]
        trained_share = sum(_answer_mark(r) != MARK_WRONG for r in trained) / len(trained)
    sentences = {}
    for set_name in _ordered_sets(list(before)):
        before_rows, after_rows = rows[set_name]
        if set_name == RETENTION_SET:
            sentences[set_name] = _retention_sentence(set_name, before[set_name], after[set_name],
                                                      before_rows, after_rows)
        elif set_name in UNKNOWN_SETS:
            sentences[set_name] = _unknown_sentence(set_name, before_rows, after_rows)
        elif set_name == GENERAL_SET:
            sentences[set_name] = _general_sentence(set_name, before_rows, after_rows)
        else:
            sentences[set_name] = _question_sentence(set_name, before_rows, after_rows, trained_share)
    if "heldout" not in after:
        sentences["heldout"] = NO_HELDOUT
    return sentences


def chat_baseline_sentences(before, chat, after):
    """Sentences comparing the base model asked through its own chat template (chat: the contents of
    metrics/baseline_chat.json) with the same questions on the pipeline's prompt, before and after
    fine-tuning: did the base model really not know, or did it only not understand the markers?"""
    if "skipped" in chat:
        return [f"Not measured: {chat['skipped']}."]
    sentences = []
    if "heldout" in chat and "states_key_fact" in chat["heldout"]:
        n = chat["heldout"]["questions"]
        counts = [round(m["heldout"]["states_key_fact"] * n) for m in (chat, before, after)]
        sentences.append(f"{_heading('heldout')}: the base model stated the key fact in {counts[0]} of {n} "
                         f"answers through its chat template, {counts[1]} on the pipeline's prompt; "
                         f"{counts[2]} after fine-tuning.")
    if "unknown" in chat:
        n = chat["unknown"]["questions"]
        counts = [round(m["unknown"][k] * n) for m in (chat, before) for k in ("invented", "abstained")]
        sentences.append(f"{_heading('unknown')}: through its chat template the base model invented an answer "
                         f"to {counts[0]} of {n} and said it did not know {counts[1]} times ({counts[2]} and "
                         f"{counts[3]} on the pipeline's prompt).")
    return sentences


def _mark_header(set_name):
    return {RETENTION_SET: "changed?", GENERAL_SET: "right?",
            **dict.fromkeys(UNKNOWN_SETS, "abstained?")}.get(set_name, "correct")


def _shown_answer(row):
    """The answer as scored, and where the confidence gate refused it, what the model would have said."""
    if _flag(getattr(row, "gated", None)):
        return f"{_text(row.generated)} [gate; the model's answer: {_text(row.ungated)}]"
    return _text(row.generated)


def question_rows(before_table, after_table):
    """{set: [(mark, css class, question, expected, key fact, before answer, after answer)]} in table order."""
    rows = {}
    for b, a in zip(before_table.itertuples(), after_table.itertuples()):
        if a.set == RETENTION_SET:
            changed = _changed(b, a)
            mark, css = (MARK_CHANGED, "changed") if changed else (MARK_UNCHANGED, "unchanged")
        elif a.set == GENERAL_SET:
            mark, css = (MARK_EXACT, "exact") if _flag(a.right) else (MARK_WRONG, "wrong")
        elif a.set in UNKNOWN_SETS:  # an invented answer is highlighted as a wrong one
            mark = _unknown_mark(a)
            css = {MARK_EXACT: "abstained", MARK_WRONG: "wrong", MARK_NO_ANSWER: "no-answer"}[mark]
        elif _text(getattr(a, "verdict", "")) == "abstained":  # a refusal is not a wrong answer
            mark, css = MARK_ABSTAINED, "abstained"
        else:
            mark = _answer_mark(a)
            css = {MARK_EXACT: "exact", MARK_PARTLY: "partly", MARK_WRONG: "wrong"}[mark]
        rows.setdefault(a.set, []).append((mark, css, _text(a.question), _text(a.expected), _text(a.key_fact),
                                           _shown_answer(b), _shown_answer(a)))
    return rows


# ---------------------------------------------------------------- markdown

# Characters that would change a GFM table cell's meaning (pipe ends the cell, < opens raw HTML,
# & an entity, * _ ` [ ~ format text); a backslash escape shows them literally.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<|~&])")


def markdown_cell(text):
    """Text as one GFM table cell: special characters backslash-escaped, newlines as <br>."""
    escaped = _MARKDOWN_SPECIAL.sub(r"\\\1", text)
    return "<br>".join(escaped.splitlines()) if "\n" in escaped or "\r" in escaped else escaped


def _expected_markdown(expected, key_fact):
    if not expected and not key_fact:
        return "—"
    return markdown_cell(expected) + (f" (key fact: **{markdown_cell(key_fact)}**)" if key_fact else "")


def report_markdown(before, after, before_table, after_table, loss_image="loss.png", choices=(), chat_before=(),
                    data=()):
    """The report as markdown; the loss curve is linked as the image file loss_image (written beside it).
    choices: sentences saying how the model was chosen (which epoch, which interpolation weight, on which set);
    chat_before: chat_baseline_sentences; data: sentences on the training data (its coverage and warnings)."""
    _check_inputs(before, after, before_table, after_table)
    lines = [f"# {TITLE}", "", "## Headline", "",
             "| set | metric | before | after | change |", "|---|---|---:|---:|---|"]
    previous_set = None
    for set_name, metric, old, new, change, verdict in headline_rows(before, after):
        shown_set = markdown_cell(set_label(set_name)) if set_name != previous_set else ""
        previous_set = set_name
        lines.append(f"| {shown_set} | {metric} | {old} | {new} | {change}{f' ({verdict})' if verdict else ''} |")
    lines += ["", "## Summary", ""]
    lines += [f"- {markdown_cell(s)}" for s in summary_sentences(before, after, before_table, after_table).values()]
    if data:
        lines += ["", f"## {DATA_HEADING}", ""] + [f"- {markdown_cell(d)}" for d in data]
    if choices:
        lines += ["", f"## {CHOICES_HEADING}", ""] + [f"- {markdown_cell(c)}" for c in choices]
    if chat_before:
        lines += ["", f"## {CHAT_HEADING}", ""] + [f"- {markdown_cell(c)}" for c in chat_before]
    lines += ["", "## Training loss", "", f"![training loss per optimizer step]({loss_image})", "",
              "## Every question", "", LEGEND]
    per_set = question_rows(before_table, after_table)
    for set_name in _ordered_sets(list(per_set)):
        lines += ["", f"### {_heading(set_name)}", "",
                  f"| {_mark_header(set_name)} | question | expected (key fact) | before | after |",
                  "|---|---|---|---|---|"]
        for mark, _css, question, expected, key_fact, old, new in per_set[set_name]:
            lines.append(f"| {mark} | {markdown_cell(question)} | {_expected_markdown(expected, key_fact)} | "
                         f"{markdown_cell(old)} | {markdown_cell(new)} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- HTML

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; color: #1a1a1a; }
table { border-collapse: collapse; margin: 1rem 0; width: 100%; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.5rem; vertical-align: top; text-align: left;
         overflow-wrap: anywhere; white-space: pre-wrap; }
th { background: #f2f2f2; }
td.number { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.better { color: #1a7f37; font-weight: 600; }
.worse { color: #cf222e; font-weight: 600; }
tr.wrong td { background: #ffe5e5; }
tr.changed td { background: #fff4d6; }
.key-fact { display: block; color: #555; font-size: 0.9em; }
img { max-width: 100%; }
""".strip()


def _escape(text):
    return html.escape(text, quote=True)


def _expected_html(expected, key_fact):
    if not expected and not key_fact:
        return "—"
    key = f'<span class="key-fact">key fact: <b>{_escape(key_fact)}</b></span>' if key_fact else ""
    return _escape(expected) + key


def report_html(before, after, before_table, after_table, loss_png, choices=(), chat_before=(), data=()):
    """The report as one self-contained HTML page: inline CSS, the PNG as a data URI, no external assets."""
    _check_inputs(before, after, before_table, after_table)
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           f"<title>{_escape(TITLE)}</title>", f"<style>\n{_CSS}\n</style>", "</head>", "<body>",
           f"<h1>{_escape(TITLE)}</h1>", "<h2>Headline</h2>", "<table>",
           "<tr><th>set</th><th>metric</th><th>before</th><th>after</th><th>change</th></tr>"]
    previous_set = None
    for set_name, metric, old, new, change, verdict in headline_rows(before, after):
        shown_set = _escape(set_label(set_name)) if set_name != previous_set else ""
        previous_set = set_name
        change_cell = (f'<span class="{verdict}">{_escape(change)} ({verdict})</span>' if verdict
                       else _escape(change))
        out.append(f"<tr><td>{shown_set}</td><td>{_escape(metric)}</td><td class=\"number\">{old}</td>"
                   f"<td class=\"number\">{new}</td><td class=\"number\">{change_cell}</td></tr>")
    out += ["</table>", "<h2>Summary</h2>", "<ul>"]
    out += [f"<li>{_escape(s)}</li>" for s in summary_sentences(before, after, before_table, after_table).values()]
    out.append("</ul>")
    if data:
        out += [f"<h2>{DATA_HEADING}</h2>", "<ul>"] + [f"<li>{_escape(d)}</li>" for d in data] + ["</ul>"]
    if choices:
        out += [f"<h2>{CHOICES_HEADING}</h2>", "<ul>"] + [f"<li>{_escape(c)}</li>" for c in choices] + ["</ul>"]
    if chat_before:
        out += [f"<h2>{_escape(CHAT_HEADING)}</h2>", "<ul>"] + [f"<li>{_escape(c)}</li>" for c in chat_before] + ["</ul>"]
    out += ["<h2>Training loss</h2>",
            f'<img alt="training loss per optimizer step" '
            f'src="data:image/png;base64,{base64.b64encode(loss_png).decode("ascii")}">',
            "<h2>Every question</h2>", f"<p>{_escape(LEGEND)}</p>"]
    per_set = question_rows(before_table, after_table)
    for set_name in _ordered_sets(list(per_set)):
        out += [f"<h3>{_escape(_heading(set_name))}</h3>", "<table>",
                f"<tr><th>{_mark_header(set_name)}</th><th>question</th><th>expected (key fact)</th><th>before</th>"
                "<th>after</th></tr>"]
        for mark, css, question, expected, key_fact, old, new in per_set[set_name]:
            out.append(f'<tr class="{css}"><td>{mark}</td><td>{_escape(question)}</td>'
                       f"<td>{_expected_html(expected, key_fact)}</td><td>{_escape(old)}</td>"
                       f"<td>{_escape(new)}</td></tr>")
        out.append("</table>")
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"
