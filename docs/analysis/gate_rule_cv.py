"""The confidence gate's rule with a tolerance m, judged on dev alone (docs/learning-quality.md).

    python docs/analysis/gate_rule_cv.py RUN_ANSWERS.csv [...]        # metrics/final_answers.csv of each run

For each run's final answers (ungated text, own NLL), the dev and dev unknown questions are split in random
halves 400 times; on one half the threshold is chosen as the highest whose score (right + unknown abstained
- wrong - unknown invented) is within m of that half's best, and scored on the other half, both ways.
Prints the mean cross-validated score per m, then what each m's threshold chosen on the whole dev set gives
on held-out and unknown questions (for the record: held-out never chooses).
A run of `llm_fft.seeds` keeps its answers in its DVC experiment: `git show <exp ref>:metrics/final_answers.csv`.
"""

import random
import sys

import pandas as pd
import yaml

from llm_fft.metrics import abstains, verdict

PARAMS = yaml.safe_load(open("params.yaml", encoding="utf-8"))
PHRASES, REFUSAL = PARAMS["evaluate"]["abstain_phrases"], PARAMS["refusal"]
MARGINS = (0, 1, 2, 3, 4)


def outcomes(table, sets):
    """(own NLL, value if answered, value if refused) per question: dev right +1 / wrong -1 / abstained 0
    (refused: 0); unknown abstained +1 / invented -1 (refused: +1)."""
    rows = []
    for r in table[table.set.isin(sets)].itertuples():
        text = r.ungated if r.ungated != "" else r.generated
        if r.set.startswith("unknown"):
            rows.append((float(r.own_answer_nll), 1 if abstains(text, PHRASES) else (-1 if text.strip() else 0), 1, r.set))
        else:
            value = {"right": 1, "wrong": -1, "abstained": 0}[verdict(text, {"answer": r.expected, "key": r.key_fact or None},
                                                                       PHRASES)]
            rows.append((float(r.own_answer_nll), value, 0, r.set))
    return rows


def score(rows, threshold):
    return sum(refused if threshold is not None and nll > threshold else answered for nll, answered, refused, _ in rows)


def choose(rows, margin):
    candidates = [-1.0, *sorted({nll for nll, *_ in rows}), None]
    scores = [score(rows, c) for c in candidates]
    return next(c for c, s in zip(reversed(candidates), reversed(scores)) if s >= max(scores) - margin)


def main(paths):
    rng, cv = random.Random(0), {m: [] for m in MARGINS}
    tables = [pd.read_csv(path, keep_default_na=False) for path in paths]
    for table in tables:
        dev = outcomes(table, ["dev", "unknown_dev"])
        for _ in range(400):
            order = rng.sample(range(len(dev)), len(dev))
            a, b = [dev[i] for i in order[:len(dev) // 2]], [dev[i] for i in order[len(dev) // 2:]]
            for m in MARGINS:
                cv[m].append(score(b, choose(a, m)) + score(a, choose(b, m)))
    for m in MARGINS:
        print(f"m = {m}: cross-validated dev score {sum(cv[m]) / len(cv[m]):.2f}")
    for path, table in zip(paths, tables):
        dev, test = outcomes(table, ["dev", "unknown_dev"]), outcomes(table, ["heldout", "unknown"])
        for m in MARGINS[:2]:
            threshold = choose(dev, m)
            heldout = [(refused if threshold is not None and nll > threshold else answered)
                       for nll, answered, refused, name in test if name == "heldout"]
            unknown = [(refused if threshold is not None and nll > threshold else answered)
                       for nll, answered, refused, name in test if name == "unknown"]
            print(f"{path}: m = {m}, threshold {threshold}: held-out right / abstained / wrong "
                  f"{heldout.count(1) / len(heldout):.3f} / {heldout.count(0) / len(heldout):.3f} / "
                  f"{heldout.count(-1) / len(heldout):.3f}, unknown abstained {unknown.count(1) / len(unknown):.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
