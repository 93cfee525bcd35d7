"""Stage report: the before/after report, built from the files the other stages wrote.

    python -m stages.report

Reads metrics/baseline.json, metrics/final.json and their answer tables, metrics/dataset.json (how
many phrasings each fact has, and the warnings about thin data), metrics/baseline_chat.json
(the base model asked through its chat template), the finetune loss curves
(DVCLive TSV files), metrics/finetune/metrics.json (the epoch kept) and metrics/interpolation.json
(the weight chosen). Writes metrics/report.md, metrics/report.html (self-contained: open it in a
browser) and metrics/loss.png. It reads no params and loads no model, so a change to the report
reruns only this stage.
"""

import json
import sys

from llm_fft.files import write_atomically
from llm_fft.metrics import read_answers
from llm_fft.paths import (
    BASELINE_ANSWERS,
    BASELINE_CHAT_METRICS,
    BASELINE_METRICS,
    DATASET_METRICS,
    DEV_LOSS,
    FINAL_ANSWERS,
    FINAL_METRICS,
    FINETUNE_METRICS,
    INTERPOLATION_METRICS,
    LOSS_PNG,
    REPORT_HTML,
    REPORT_MD,
    TRAIN_LOSS,
)
from llm_fft.report import (
    ReportInputError,
    chat_baseline_sentences,
    loss_curve_png,
    report_html,
    report_markdown,
)
from llm_fft.summary import data_sentences, gate_words


def read_json(path):
    return json.loads(path.read_text(encoding="utf-8"))


def how_chosen(kept, chosen, dev_questions=None):
    """Sentences for the report: the epoch finetune kept and the weight interpolate chose, and on what
    (dev_questions: how many dev questions the epoch's dev answer loss was measured on)."""
    epoch = f"Epoch kept: {kept['kept_epoch']} ({kept['kept_by']}"
    if "kept_dev_answer_nll" in kept:
        epoch += f", {kept['kept_dev_answer_nll']} nats/token" + (f" on {dev_questions} dev questions"
                                                                 if dev_questions else "")
    epoch += ")."
    weight = (f"Interpolation weight: {chosen['chosen_weight']} (w = base + {chosen['chosen_weight']} x "
              f"(fine-tuned - base)), chosen on {chosen['chosen_on']}.")
    return [epoch, weight, "The held-out questions and the retention probe chose nothing: they only report."]


def headline_metrics(metrics):
    """The metrics the headline compares, before and after alike: the gate's threshold is a choice
    (said under how the model was chosen), and the general probe's kept/lost exist only after (the
    general sentence says them, from the answer tables)."""
    metrics = {name: numbers for name, numbers in metrics.items() if name != "gate"}
    if "general" in metrics:
        metrics["general"] = {k: metrics["general"][k] for k in ("prompts", "right")}
    return metrics


def gate_sentence(before, after):
    """The confidence gate's thresholds, as chosen for each model on its own dev answers."""
    if "gate" not in after:
        return []
    said = {name: gate_words(m["gate"]["threshold"]) for name, m in (("before", before), ("after", after))
            if "gate" in m}
    cost = after["gate"].get("wrong_cost", 1)  # recorded since the cost became a param; 1 before
    weight = "" if cost == 1 else f"{cost:g} x "
    return [f"Confidence gate, chosen on {after['gate']['chosen_on_questions']} dev and dev unknown questions by most "
            f"(right + unknown refused) - {weight}(wrong + unknown invented): "
            + "; ".join(f"{k}: {v}" for k, v in said.items()) + "."]


def main():
    full_before, full_after = read_json(BASELINE_METRICS), read_json(FINAL_METRICS)
    before, after = headline_metrics(full_before), headline_metrics(full_after)
    before_table, after_table = read_answers(BASELINE_ANSWERS), read_answers(FINAL_ANSWERS)
    dataset = read_json(DATASET_METRICS)
    choices = how_chosen(read_json(FINETUNE_METRICS), read_json(INTERPOLATION_METRICS), dataset.get("dev_questions")) \
        + gate_sentence(full_before, full_after)
    chat_before = chat_baseline_sentences(before, read_json(BASELINE_CHAT_METRICS), after)
    data = data_sentences(dataset)
    png = loss_curve_png(TRAIN_LOSS, DEV_LOSS if DEV_LOSS.exists() else None)
    try:
        markdown = report_markdown(before, after, before_table, after_table, LOSS_PNG.name, choices, chat_before, data)
        page = report_html(before, after, before_table, after_table, png, choices, chat_before, data)
    except ReportInputError as e:
        sys.exit(f"error: {e}\n(rerun the evaluations: dvc repro final_eval)")
    write_atomically(LOSS_PNG, png)
    write_atomically(REPORT_MD, markdown)
    write_atomically(REPORT_HTML, page)
    print(f"wrote the report: {REPORT_HTML} (open it in a browser) / {REPORT_MD}, and {LOSS_PNG}")


if __name__ == "__main__":
    main()
