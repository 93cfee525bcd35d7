"""Stage final_eval: what the fine-tuned model answers, and the before/after delta.

    python -m stages.final_eval

Same code, sets, prompts and decoding as baseline_eval (evaluate.*, prompt.*, device), on models/final
(the fine-tuned model, interpolated towards the base as stage interpolate chose). Writes
metrics/final.json (same keys as metrics/baseline.json), metrics/final_answers.csv,
metrics/delta.json (final - baseline for the headline numbers) and metrics/gate_curve.json (each
threshold the confidence gate could take, with its dev right / abstained / wrong: the chosen one is in
final.json's gate). Stage report turns them into pages.
"""

import json
import sys
from pathlib import Path

from llm_fft.evaluation import evaluate_stage
from llm_fft.files import write_atomically
from llm_fft.metrics import delta, read_answers, write_results
from llm_fft.params import ParamsError, load_params

MODEL_DIR = Path("models/final")
METRICS = Path("metrics/final.json")
ANSWERS = Path("metrics/final_answers.csv")
DELTA = Path("metrics/delta.json")
GATE_CURVE = Path("metrics/gate_curve.json")
BASELINE_METRICS = Path("metrics/baseline.json")
BASELINE_ANSWERS = Path("metrics/baseline_answers.csv")


def main():
    before = json.loads(BASELINE_METRICS.read_text(encoding="utf-8"))
    metrics, table, curve = evaluate_stage(load_params(), MODEL_DIR, read_answers(BASELINE_ANSWERS))
    write_results(metrics, table, METRICS, ANSWERS)
    # Every candidate threshold with its dev numbers, for `dvc plots show` (no gate at all is the
    # highest threshold's point: it refuses no dev answer).
    write_atomically(GATE_CURVE, json.dumps([p for p in curve if p["threshold"] is not None], indent=2) + "\n")
    changes = delta(before, metrics)
    write_atomically(DELTA, json.dumps(changes, indent=2) + "\n")
    for name, numbers in changes.items():
        print(f"{name}: " + ", ".join(f"{k} {before[name][k]:.3f} -> {metrics[name][k]:.3f}" for k in numbers))
    print(f"wrote {METRICS}, {ANSWERS} and {DELTA}")


if __name__ == "__main__":
    try:
        main()
    except ParamsError as e:  # the library raises; the stage says why in one message and exits non-zero
        sys.exit(f"error: {e}")
