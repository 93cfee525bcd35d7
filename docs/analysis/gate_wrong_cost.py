"""What evaluate.gate_wrong_cost would have chosen on runs already made (docs/learning-quality.md).

    python docs/analysis/gate_wrong_cost.py RUN_ANSWERS.csv [...]     # metrics/final_answers.csv of each run

The gate is applied after every question is answered, so a run's final answers (ungated text, own NLL)
are enough: for each cost, llm_fft.evaluation.choose_gate picks the threshold on the dev and dev unknown
questions, as final_eval does, and the held-out and unknown questions are scored at it (for the record:
held-out never chooses). No model is run. A run of `llm_fft.seeds` keeps its answers in its DVC
experiment: `git show <exp ref>:metrics/final_answers.csv`.
"""

import sys

import pandas as pd
import yaml

from llm_fft.evaluation import choose_gate, gated
from llm_fft.metrics import abstains, invented, verdict

PARAMS = yaml.safe_load(open("params.yaml", encoding="utf-8"))
PHRASES, REFUSAL = PARAMS["evaluate"]["abstain_phrases"], PARAMS["refusal"]
COSTS = (0.25, 0.5, 1, 2)


def questions(table, name):
    """(records, ungated answers) of one set, as final_eval had them before the gate."""
    rows = table[table.set == name]
    records = [{"answer": r.expected, "key": r.key_fact or None} for r in rows.itertuples()]
    answers = [{"text": r.ungated, "own_answer_nll": float(r.own_answer_nll)} for r in rows.itertuples()]
    return records, answers


def main(paths):
    for path in paths:
        table = pd.read_csv(path, keep_default_na=False)
        (dev, dev_answers), (_, unknown_dev) = questions(table, "dev"), questions(table, "unknown_dev")
        (heldout, heldout_answers), (_, unknown) = questions(table, "heldout"), questions(table, "unknown")
        for cost in COSTS:
            threshold, _ = choose_gate(dev, dev_answers, unknown_dev, PHRASES, REFUSAL, cost)
            verdicts = [verdict(a["text"], r, PHRASES) for a, r in zip(gated(heldout_answers, threshold, REFUSAL), heldout)]
            made_up = sum(invented(a["text"], abstains(a["text"], PHRASES)) for a in gated(unknown, threshold, REFUSAL))
            print(f"{path}: cost {cost}, threshold {threshold}: held-out right / abstained / wrong "
                  + " / ".join(f"{verdicts.count(v) / max(1, len(verdicts)):.3f}" for v in ("right", "abstained", "wrong"))
                  + f", unknown invented {made_up / max(1, len(unknown)):.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
