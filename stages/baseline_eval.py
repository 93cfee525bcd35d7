"""Stage baseline_eval: what the base model answers before fine-tuning.

    python stages/baseline_eval.py

Reads evaluate.*, prompt.*, seed and device in params.yaml, models/base and the three evaluation
sets (data/qa.jsonl, data/heldout_qa.jsonl, data/retention.yaml). Writes metrics/baseline.json and
metrics/baseline_answers.csv (every question of every set with its answer and scores).
final_eval runs the same code on models/finetuned.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # python stages/x.py: import llm_fft from the repo

from llm_fft.evaluation import evaluate_stage, write_results
from llm_fft.params import load_params

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
    main()
