"""Stage final_eval: what the fine-tuned model answers, the before/after delta and the report.

    python stages/final_eval.py

Same code, sets, prompts and decoding as baseline_eval (evaluate.*, prompt.*, seed, device), on
models/final (the fine-tuned model, interpolated towards the base as stage interpolate chose). Writes metrics/final.json (same keys as metrics/baseline.json),
metrics/final_answers.csv, metrics/delta.json (final - baseline for the headline numbers) and the
report: metrics/report.md and metrics/report.html (self-contained), with metrics/loss.png.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # python stages/x.py: import llm_fft from the repo

from llm_fft.evaluation import delta, evaluate_stage, read_answers, write_results
from llm_fft.files import write_atomically
from llm_fft.params import load_params
from llm_fft.report import loss_curve_png, report_html, report_markdown

MODEL_DIR = Path("models/final")
METRICS = Path("metrics/final.json")
ANSWERS = Path("metrics/final_answers.csv")
DELTA = Path("metrics/delta.json")
BASELINE_METRICS = Path("metrics/baseline.json")
BASELINE_ANSWERS = Path("metrics/baseline_answers.csv")
TRAIN_LOSS = Path("metrics/finetune/plots/metrics/train/loss.tsv")
DEV_LOSS = Path("metrics/finetune/plots/metrics/dev/answer_nll.tsv")
REPORT_MD = Path("metrics/report.md")
REPORT_HTML = Path("metrics/report.html")
LOSS_PNG = Path("metrics/loss.png")
FINETUNE_SUMMARY = Path("metrics/finetune/metrics.json")
INTERPOLATION = Path("metrics/interpolation.json")


def how_chosen():
    """Sentences for the report: the epoch finetune kept and the weight interpolate chose, and on what."""
    kept = json.loads(FINETUNE_SUMMARY.read_text(encoding="utf-8"))
    chosen = json.loads(INTERPOLATION.read_text(encoding="utf-8"))
    epoch = f"Epoch kept: {kept['kept_epoch']} ({kept['kept_by']}"
    epoch += f", {kept['kept_dev_answer_nll']} nats/token)." if "kept_dev_answer_nll" in kept else ")."
    weight = (f"Interpolation weight: {chosen['chosen_weight']} (w = base + {chosen['chosen_weight']} x "
              f"(fine-tuned - base)), chosen on {chosen['chosen_on']}.")
    return [epoch, weight, "The held-out questions and the retention probe chose nothing: they only report."]


def main():
    before = json.loads(BASELINE_METRICS.read_text(encoding="utf-8"))
    before_table = read_answers(BASELINE_ANSWERS)
    metrics, table = evaluate_stage(load_params(), MODEL_DIR, before_table)
    write_results(metrics, table, METRICS, ANSWERS)
    after_table = read_answers(ANSWERS)  # typed as before_table is, from the same kind of file
    changes = delta(before, metrics)
    write_atomically(DELTA, json.dumps(changes, indent=2) + "\n")

    png = loss_curve_png(TRAIN_LOSS, DEV_LOSS if DEV_LOSS.exists() else None)
    write_atomically(LOSS_PNG, png)
    choices = how_chosen()
    write_atomically(REPORT_MD, report_markdown(before, metrics, before_table, after_table, LOSS_PNG.name, choices))
    write_atomically(REPORT_HTML, report_html(before, metrics, before_table, after_table, png, choices))
    for name, numbers in changes.items():
        print(f"{name}: " + ", ".join(f"{k} {before[name][k]:.3f} -> {metrics[name][k]:.3f}" for k in numbers))
    print(f"wrote {METRICS}, {ANSWERS}, {DELTA} and the report: {REPORT_HTML} (open it in a browser) / {REPORT_MD}")


if __name__ == "__main__":
    main()
