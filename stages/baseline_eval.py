"""Stage baseline_eval: what the base model answers before fine-tuning.

    python stages/baseline_eval.py

Reads evaluate.*, seed and device in params.yaml, data/qa.jsonl and models/base. Writes
metrics/baseline.json and metrics/baseline_answers.csv (question, expected, generated, correct).
final_eval runs the same code on models/finetuned.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # python stages/x.py: import llm_fft from the repo

from llm_fft.evaluation import evaluate_stage, write_results
from llm_fft.params import load_params

MODEL_DIR = Path("models/base")
RECORDS = Path("data/qa.jsonl")
METRICS = Path("metrics/baseline.json")
ANSWERS = Path("metrics/baseline_answers.csv")


def main():
    metrics, table = evaluate_stage(load_params(), MODEL_DIR, RECORDS)
    write_results(metrics, table, METRICS, ANSWERS)
    print(f"wrote {METRICS} and {ANSWERS}: exact match {metrics['exact_match']:.3f}, contains "
          f"{metrics['contains_answer']:.3f}, answer NLL {metrics['answer_nll']:.3f} on {metrics['questions']} questions")


if __name__ == "__main__":
    main()
