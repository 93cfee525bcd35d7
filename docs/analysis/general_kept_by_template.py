"""General facts kept, split by whether a rehearsed fact shares the probe opening's template
(docs/learning-quality.md, "Rehearsed general facts").

    python docs/analysis/general_kept_by_template.py BASELINE_ANSWERS.csv FINAL_ANSWERS.csv [...]

A probe opening shares a template when it starts like one of the rehearsed facts the base model kept
(TEMPLATES below: "The capital of Greece is" was rehearsed, "The capital of Japan is" is probed). Prints,
per run, the facts the base model got right and how many of them are still right, for the openings that
share a template and for the others.
"""

import sys

import pandas as pd

# Openings of the rehearsed facts SmolLM2 states right (make_rehearsal's output with rehearsal.facts).
TEMPLATES = ("The capital of", "The currency of", "The main language spoken in", "The opposite of",
             "The longest river in", "Q: ")


def general(path):
    table = pd.read_csv(path, keep_default_na=False)
    rows = table[table.set == "general"].sort_values("id")
    return list(rows.question), [str(r) == "True" for r in rows.right]


def main(baseline, finals):
    prompts, before = general(baseline)
    shared = [p.startswith(TEMPLATES) for p in prompts]
    for path in finals:
        _, after = general(path)
        counts = []
        for subset in (True, False):
            known = [a for b, a, s in zip(before, after, shared) if b and s == subset]
            counts.append(f"{sum(known)}/{len(known)}")
        print(f"{path}: kept, sharing a rehearsed template {counts[0]}, the others {counts[1]}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
