"""Stage baseline_eval: what the base model answers before fine-tuning.

    python -m stages.baseline_eval

Reads evaluate.*, prompt.* and device in params.yaml, models/base, the question sets (data/qa.jsonl,
data/dev_qa.jsonl, data/heldout_qa.jsonl, and data/unknown_qa.jsonl: questions the data does not
answer) and the retention probe (data/retention.yaml). Writes
metrics/baseline.json and metrics/baseline_answers.csv (every question of every set with its answer
and scores). final_eval runs the same code on models/final.
"""

import sys
from pathlib import Path

from llm_fft.evaluation import evaluate_stage
from llm_fft.metrics import write_results
from llm_fft.params import ParamsError, load_params

MODEL_DIR = Path("models/base")
METRICS = Path("metrics/baseline.json")
ANSWERS = Path("metrics/baseline_answers.csv")


def main():
    metrics, table = evaluate_stage(load_params(), MODEL_DIR)
    write_results(metrics, table, METRICS, ANSWERS)
    summary = ", ".join(f"{name} exact match {m['exact_match']:.3f}" for name, m in metrics.items()
                        if isinstance(m, dict) and "exact_match" in m)
    print(f"wrote {METRICS} and {ANSWERS}: {summary}")


if __name__ == "__main__":
    try:
        main()
    except ParamsError as e:  # the library raises; the stage says why in one message and exits non-zero
        sys.exit(f"error: {e}")
