"""Run one setting over several seeds and write the mean, min and max of every metric.

    python -m llm_fft.seeds --name lr2e-5 --seeds 123 1 2 -S finetune.lr=2e-5
    make seeds NAME=lr2e-5 SET="-S finetune.lr=2e-5"          # SEEDS="123 1 2" by default

The held-out score of one run moves by several questions with the batch order alone, so settings are
compared over seeds. Each seed is one `dvc exp run -S seed=N` (plus your -S overrides) in this
workspace: DVC reruns what reads the seed (finetune, interpolate, final_eval; prepare_model and
generate_dataset too, in seconds, and what follows them only where their output changes: special-token
markers, the llm backend), and `dvc exp show` lists every run. The default seeds, 123 1 2, are the
ones nearly every record in metrics/seeds/ ran, so a new setting compares seed by seed. A record is
never overwritten (another NAME, or delete the file first); a series stopped midway is finished by
the same command (same seeds, settings and commit). After each run the metrics files are read;
metrics/seeds/NAME.json gets every run's numbers and their mean, min and max, with the commit and
machine they came from, and a table is printed.
The workspace is left holding the last seed's run: `git checkout -- params.yaml dvc.lock metrics/ &&
dvc checkout` returns to the committed one.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from llm_fft.paths import BASELINE_METRICS, FINAL_METRICS, FINETUNE_METRICS, INTERPOLATION_METRICS, SEEDS

# Read after each run: {prefix: file}; every number in them is collected as prefix.key.path.
RESULT_FILES = {"final": FINAL_METRICS, "baseline": BASELINE_METRICS, "interpolation": INTERPOLATION_METRICS,
                "finetune": FINETUNE_METRICS}
# What the printed table shows (every number is in the JSON file).
SHOWN = ["final.trained.exact_match", "final.trained.exact_match_any_answer", "final.dev.states_key_fact",
         "final.dev.right", "final.dev.wrong", "final.heldout.states_key_fact", "final.heldout.right", "final.heldout.abstained", "final.heldout.wrong",
         "final.gate.ungated.heldout.right", "final.gate.ungated.heldout.wrong", "final.unknown.abstained",
         "final.unknown.invented", "final.general.kept", "final.gate.threshold", "retention.perplexity_ratio",
         "interpolation.chosen_weight", "finetune.kept_epoch"]


def flatten(tree, prefix):
    """{'a': {'b': 1}} -> {'prefix.a.b': 1}, numbers only."""
    numbers = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            numbers.update(flatten(value, f"{prefix}.{key}"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            numbers[f"{prefix}.{key}"] = value
    return numbers


def read_results():
    """Every number of one finished run, plus the general-text perplexity after / before."""
    numbers = {}
    for prefix, path in RESULT_FILES.items():
        if path.exists():
            numbers.update(flatten(json.loads(path.read_text(encoding="utf-8")), prefix))
    before, after = numbers.get("baseline.retention.text_perplexity"), numbers.get("final.retention.text_perplexity")
    if before and after:
        numbers["retention.perplexity_ratio"] = round(after / before, 4)
    return numbers


def summarise(runs):
    """{metric: {mean, min, max}} over the runs that have it. The mean keeps 6 decimals: rounded to the
    metrics' own 4, a mean such as 0.94447 would show as 0.945 at 3 (rounded twice) instead of 0.944."""
    keys = sorted({k for run in runs for k in run})
    return {k: {"mean": round(sum(v) / len(v), 6), "min": min(v), "max": max(v)}
            for k in keys if (v := [run[k] for run in runs if k in run])}


def provenance():
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                           text=True).stdout.strip()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"commit": commit + (" (with uncommitted changes)" if dirty else ""),
            "machine": f"{cpu}, {os.cpu_count()} cores, {platform.system()}"}


def write_summary(out, args, origin, runs):
    """metrics/seeds/NAME.json from the runs finished so far; returns what it wrote."""
    done = [run["seed"] for run in runs]
    summary = {"name": args.name, "settings": args.overrides, "seeds": done, **origin,
               "summary": summarise([{k: v for k, v in run.items() if k != "seed"} for run in runs]), "runs": runs}
    if done != args.seeds:
        summary["unfinished"] = [seed for seed in args.seeds if seed not in done]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return summary


def resumed(out, args, origin):
    """(origin, runs) of the record `out` when it is this series stopped midway (same settings and seeds,
    same commit): its finished runs are kept and only the rest run. Anything else is an error."""
    record = json.loads(out.read_text(encoding="utf-8"))
    ran = f"seeds {' '.join(map(str, record.get('seeds', [])))}, commit {record.get('commit')}"
    if not record.get("unfinished"):
        sys.exit(f"error: {out} exists ({ran}): choose another NAME, or `rm {out}` to run that series again")
    same = (record.get("settings") == args.overrides
            and sorted(record["seeds"] + record["unfinished"]) == sorted(args.seeds)
            and str(record.get("commit")).split()[0] == origin["commit"].split()[0])
    if not same:
        sys.exit(f"error: {out} is a series stopped midway ({ran}; seeds {record['unfinished']} not run, settings "
                 f"{record.get('settings')}): run it with the same seeds, settings and commit to finish it, or "
                 f"choose another NAME, or `rm {out}`")
    print(f"== {args.name}: seeds {record['seeds']} already run; running {record['unfinished']}", flush=True)
    return {"commit": record["commit"], "machine": record.get("machine")}, record["runs"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="the setting's name: writes metrics/seeds/NAME.json")
    parser.add_argument("--seeds", type=int, nargs="+", default=[123, 1, 2],
                        help="seeds to run (default 123 1 2, those of the committed records)")
    parser.add_argument("-S", "--set-param", action="append", default=[], dest="overrides",
                        help="a params override for every run, as for dvc exp run -S (repeatable)")
    args = parser.parse_args()
    if any(o.split("=", 1)[0] == "seed" for o in args.overrides):
        sys.exit("error: the seed is set by --seeds, not by -S seed=...")
    if len(args.seeds) != len(set(args.seeds)):
        sys.exit(f"error: --seeds lists a seed twice: {args.seeds}")

    out = SEEDS / f"{args.name}.json"
    origin = provenance()  # before the runs: the code they ran
    runs = []
    if out.exists():  # a record is never replaced; a series stopped midway is finished
        origin, runs = resumed(out, args, origin)
    for seed in args.seeds:
        if any(run["seed"] == seed for run in runs):
            continue
        command = ["dvc", "exp", "run", "-S", f"seed={seed}", *(x for o in args.overrides for x in ("-S", o))]
        print(f"== {args.name}: seed {seed}: {' '.join(command)}", flush=True)
        if subprocess.run(command).returncode != 0:
            kept = (f"{out} holds the seeds before it: the same command runs the rest" if runs
                    else "nothing written")
            sys.exit(f"error: the run with seed {seed} failed (its output is above); {kept}")
        runs.append({"seed": seed, **read_results()})
        # Written after every seed, so an interrupted series keeps the runs it finished.
        summary = write_summary(out, args, origin, runs)

    width = max(map(len, SHOWN))
    print(f"\n{args.name} over seeds {', '.join(map(str, args.seeds))} ({' '.join(args.overrides) or 'params.yaml as is'}):")
    print(f"{'metric':<{width}}  {'mean':>8}  {'min':>8}  {'max':>8}")
    for key in SHOWN:
        if key in summary["summary"]:
            s = summary["summary"][key]
            print(f"{key:<{width}}  {s['mean']:>8.4g}  {s['min']:>8.4g}  {s['max']:>8.4g}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
