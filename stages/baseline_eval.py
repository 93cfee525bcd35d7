"""Stage baseline_eval: what the base model answers before fine-tuning.

    python -m stages.baseline_eval

Reads evaluate.*, prompt.* and device in params.yaml, models/base, the question sets (data/trained_qa.jsonl,
data/dev_qa.jsonl, data/heldout_qa.jsonl, and data/unknown_qa.jsonl: questions the data does not
answer) and the retention probe (data/retention.yaml). Writes
metrics/baseline.json and metrics/baseline_answers.csv (every question of every set with its answer
and scores). final_eval runs the same code on models/final, the confidence gate included: the base
model's own threshold is chosen on its own dev answers by the same rule (evaluate.gate).
Where the base model has a chat template (and prompt.style is not chat already), the held-out and
unknown questions are also asked through it: metrics/baseline_chat.json and
metrics/baseline_chat_answers.csv, the "before" on the model's own prompt (the report shows both).
"""

import json
import sys

from llm_fft.evaluation import evaluate_chat_template, evaluate_model, load_for_evaluation
from llm_fft.files import write_atomically
from llm_fft.metrics import write_results
from llm_fft.params import ParamsError, load_params
from llm_fft.paths import BASE_MODEL, BASELINE_ANSWERS, BASELINE_CHAT_ANSWERS, BASELINE_CHAT_METRICS, BASELINE_METRICS


def main():
    params = load_params()
    model, tokenizer, device = load_for_evaluation(params, BASE_MODEL)
    metrics, table, _ = evaluate_model(params, model, tokenizer, device)  # the gate's curve: final_eval plots its own
    chat_metrics, chat_table = evaluate_chat_template(params, model, tokenizer, device)
    write_results(metrics, table, BASELINE_METRICS, BASELINE_ANSWERS)
    summary = ", ".join(f"{name} exact match {m['exact_match']:.3f}" for name, m in metrics.items()
                        if isinstance(m, dict) and "exact_match" in m)
    print(f"wrote {BASELINE_METRICS} and {BASELINE_ANSWERS}: {summary}")
    if chat_metrics is None:  # chat_table says why there is no chat-template baseline
        write_atomically(BASELINE_CHAT_ANSWERS, "")
        write_atomically(BASELINE_CHAT_METRICS, json.dumps({"skipped": chat_table}, indent=2) + "\n")
        print(f"no chat-template baseline: {chat_table}")
        return
    write_results(chat_metrics, chat_table, BASELINE_CHAT_METRICS, BASELINE_CHAT_ANSWERS)
    summary = ", ".join(f"{name} states key fact {m['states_key_fact']:.3f}" for name, m in chat_metrics.items()
                        if "states_key_fact" in m)
    print(f"wrote {BASELINE_CHAT_METRICS} and {BASELINE_CHAT_ANSWERS} (asked through the chat template): {summary}")


if __name__ == "__main__":
    try:
        main()
    except ParamsError as e:  # the library raises; the stage says why in one message and exits non-zero
        sys.exit(f"error: {e}")
