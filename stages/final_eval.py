"""Stage final_eval: what the fine-tuned model answers, and the before/after comparison.

    python stages/final_eval.py

Same code, prompts and decoding as baseline_eval (evaluate.*, seed, device), on models/finetuned.
Writes metrics/final.json (same keys as metrics/baseline.json), metrics/final_answers.csv and
metrics/comparison.md (summary numbers, then question | expected | before | after).
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # python stages/x.py: import llm_fft from the repo

import pandas as pd

from llm_fft.evaluation import comparison_markdown, evaluate_stage, write_results
from llm_fft.files import write_atomically
from llm_fft.params import load_params

MODEL_DIR = Path("models/finetuned")
RECORDS = Path("data/qa.jsonl")
METRICS = Path("metrics/final.json")
ANSWERS = Path("metrics/final_answers.csv")
BASELINE_METRICS = Path("metrics/baseline.json")
BASELINE_ANSWERS = Path("metrics/baseline_answers.csv")
COMPARISON = Path("metrics/comparison.md")


def main():
    metrics, table = evaluate_stage(load_params(), MODEL_DIR, RECORDS)
    write_results(metrics, table, METRICS, ANSWERS)

    before = json.loads(BASELINE_METRICS.read_text(encoding="utf-8"))
    before_table = pd.read_csv(BASELINE_ANSWERS, keep_default_na=False)
    write_atomically(COMPARISON, comparison_markdown(before, metrics, before_table, table))
    print(f"wrote {METRICS}, {ANSWERS} and {COMPARISON}: exact match "
          f"{before['exact_match']:.3f} -> {metrics['exact_match']:.3f}, answer NLL "
          f"{before['answer_nll']:.3f} -> {metrics['answer_nll']:.3f}")


if __name__ == "__main__":
    main()
