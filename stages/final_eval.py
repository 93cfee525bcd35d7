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

from llm_fft.evaluation import evaluate_stage
from llm_fft.files import write_atomically
from llm_fft.metrics import delta, read_answers, write_results
from llm_fft.params import ParamsError, load_params
from llm_fft.paths import (
    BASELINE_ANSWERS,
    BASELINE_METRICS,
    DELTA,
    FINAL_ANSWERS,
    FINAL_METRICS,
    FINAL_MODEL,
    GATE_CURVE,
)


def main():
    before = json.loads(BASELINE_METRICS.read_text(encoding="utf-8"))
    metrics, table, curve = evaluate_stage(load_params(), FINAL_MODEL, read_answers(BASELINE_ANSWERS))
    write_results(metrics, table, FINAL_METRICS, FINAL_ANSWERS)
    # Every candidate threshold with its dev numbers, for `dvc plots show` (no gate at all is the
    # highest threshold's point: it refuses no dev answer).
    write_atomically(GATE_CURVE, json.dumps([p for p in curve if p["threshold"] is not None], indent=2) + "\n")
    changes = delta(before, metrics)
    write_atomically(DELTA, json.dumps(changes, indent=2) + "\n")
    for name, numbers in changes.items():
        print(f"{name}: " + ", ".join(f"{k} {before[name][k]:.3f} -> {metrics[name][k]:.3f}" for k in numbers))
    print(f"wrote {FINAL_METRICS}, {FINAL_ANSWERS} and {DELTA}")


if __name__ == "__main__":
    try:
        main()
    except ParamsError as e:  # the library raises; the stage says why in one message and exits non-zero
        sys.exit(f"error: {e}")
