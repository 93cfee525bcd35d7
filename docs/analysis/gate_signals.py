"""Which confidence should the gate read? Other signals than today's, compared on runs already made
(docs/learning-quality.md).

    python docs/analysis/gate_signals.py MODEL_DIR:RUN_ANSWERS.csv [...]   # each run's models/final and metrics/final_answers.csv

For every dev, held-out, unknown and dev unknown question the run's own (ungated) answer is scored
teacher-forced by its final model, token by token, and so is the refusal (params `refusal`) after the
same prompt. Each signal then takes the place of own_answer_nll in llm_fft.evaluation.choose_gate, which
picks its threshold on dev and dev unknown questions as final_eval does (evaluate.gate_wrong_cost
included); held-out and unknown questions are scored at that threshold, for the record (they never choose). Printed per run and signal: the dev
score that chose, AUROC (how often a right answer is more confident than a wrong one: dev, held-out), and
held-out right / wrong and unknown invented at the chosen threshold. The questions are read from
data/*_qa.jsonl, which must be the run's (checked question by question).
A run of `llm_fft.seeds` keeps both in its DVC experiment (`dvc exp apply NAME`, or `git show
<exp ref>:metrics/final_answers.csv` and the models/final hash in that ref's dvc.lock).
"""

import sys

import pandas as pd
import torch
import torch.nn.functional as F

from llm_fft.evaluation import choose_gate, gated
from llm_fft.files import read_jsonl
from llm_fft.metrics import abstains, invented, verdict
from llm_fft.model import load_pretrained
from llm_fft.params import load_params
from llm_fft.prompts import answer_ids

PARAMS = load_params()
PHRASES, REFUSAL, PROMPT = PARAMS["evaluate"]["abstain_phrases"], PARAMS["refusal"], PARAMS["prompt"]
WRONG_COST = PARAMS["evaluate"]["gate_wrong_cost"]
SETS = ("dev", "heldout", "unknown", "unknown_dev")
# Higher = less sure: above the threshold the answer is refused.
SIGNALS = {
    "own answer NLL, mean (today's)": lambda q: q["stored_nll"],
    "own answer NLL, worst token": lambda q: max(q["own"]),
    "own answer NLL, total": lambda q: sum(q["own"]),
    "own total - refusal total": lambda q: sum(q["own"]) - sum(q["refusal"]),
    "own mean - refusal mean": lambda q: sum(q["own"]) / len(q["own"]) - sum(q["refusal"]) / len(q["refusal"]),
}


@torch.inference_mode()
def token_nlls(model, q_ids, a_ids):
    """The NLL of each of a_ids after q_ids (nats)."""
    logits = model(input_ids=torch.tensor([q_ids + a_ids])).logits[0, len(q_ids) - 1:-1].float()
    return F.cross_entropy(logits, torch.tensor(a_ids), reduction="none").tolist()


def scored_questions(model_dir, answers_csv):
    """{set: [{record, text, stored_nll, own, refusal}]} for one run."""
    model, tokenizer = load_pretrained(model_dir, torch.float32, "cpu")
    table = pd.read_csv(answers_csv, keep_default_na=False)
    out = {}
    for name in SETS:
        rows, records = table[table.set == name], read_jsonl(f"data/{name}_qa.jsonl")
        if list(rows.question) != [r["question"] for r in records]:
            raise SystemExit(f"{answers_csv}: its {name} questions are not data/{name}_qa.jsonl's")
        out[name] = [{"record": r, "text": row.ungated, "stored_nll": float(row.own_answer_nll),
                      "own": token_nlls(model.eval(), r["q_ids"], answer_ids(tokenizer, r["question"], row.ungated, PROMPT)),
                      "refusal": token_nlls(model, r["q_ids"], answer_ids(tokenizer, r["question"], REFUSAL, PROMPT))}
                     for r, row in zip(records, rows.itertuples())]
    return out


def auroc(right, wrong):
    """P(a right answer's signal < a wrong one's), ties half."""
    pairs = [(r < w) + 0.5 * (r == w) for r in right for w in wrong]
    return sum(pairs) / len(pairs) if pairs else float("nan")


def report(run, questions, signal):
    answers = {name: [{"text": q["text"], "own_answer_nll": signal(q)} for q in qs] for name, qs in questions.items()}
    records = {name: [q["record"] for q in qs] for name, qs in questions.items()}
    threshold, curve = choose_gate(records["dev"], answers["dev"], answers["unknown_dev"], PHRASES, REFUSAL, WRONG_COST)
    dev_score = next(p["score"] for p in curve if p["threshold"] == threshold)
    aucs = []
    for name in ("dev", "heldout"):
        by_verdict = {"right": [], "wrong": []}
        for a, r in zip(answers[name], records[name]):
            by_verdict.get(verdict(a["text"], r, PHRASES), []).append(a["own_answer_nll"])
        aucs.append(auroc(by_verdict["right"], by_verdict["wrong"]))
    heldout = [verdict(a["text"], r, PHRASES)
               for a, r in zip(gated(answers["heldout"], threshold, REFUSAL), records["heldout"])]
    made_up = [invented(a["text"], abstains(a["text"], PHRASES)) for a in gated(answers["unknown"], threshold, REFUSAL)]
    return {"run": run, "dev score": dev_score, "AUROC dev": round(aucs[0], 3), "AUROC held-out": round(aucs[1], 3),
            "held-out right": round(heldout.count("right") / max(1, len(heldout)), 3),
            "held-out wrong": round(heldout.count("wrong") / max(1, len(heldout)), 3),
            "unknown invented": round(sum(made_up) / max(1, len(made_up)), 3)}


def main(runs):
    rows = []
    for run in runs:
        model_dir, answers_csv = run.split(":")
        questions = scored_questions(model_dir, answers_csv)
        rows += [{"signal": name, **report(run, questions, signal)} for name, signal in SIGNALS.items()]
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    print("\nmean over the runs:")
    print(table.drop(columns="run").groupby("signal", sort=False).mean().round(3).to_string())


if __name__ == "__main__":
    main(sys.argv[1:])
