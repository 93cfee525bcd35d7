"""End to end: the real stages through `dvc repro` in a temporary copy of the repo, on the embedded
model with a tiny dataset and few steps; then what DVC reruns after each kind of edit."""

import contextlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm_fft.evaluation import REFUSE_ALL
from llm_fft.formats import read_pairs
from llm_fft.metrics import read_answers

REPO = Path(__file__).resolve().parents[1]
STAGES = ["prepare_model", "generate_dataset", "parse_qa", "make_rehearsal", "teacher_distributions", "baseline_eval",
          "finetune", "interpolate", "final_eval", "report"]
# What the facts, the dataset and the prompt do not touch: the base model's own text and its distributions.
REHEARSAL_STAGES = ("make_rehearsal", "teacher_distributions")
# The report stage's inputs among the results: it reruns exactly when one of them changed.
REPORT_INPUTS = ["metrics/baseline.json", "metrics/baseline_answers.csv", "metrics/baseline_chat.json", "metrics/final.json",
                 "metrics/final_answers.csv", "metrics/interpolation.json", "metrics/finetune/metrics.json",
                 "metrics/finetune/plots/metrics/train/loss.tsv", "metrics/finetune/plots/metrics/dev/answer_nll.tsv"]
TINY_FACTS = {"subject": "test", "unknown": ["별무리섬의 면적은?", "등대는 몇 년에 세워졌나요?"],
              "unknown_dev": ["별무리섬의 이장은 누구인가요?"], "unknown_train": ["은하호의 선장은 누구인가요?", "섬의 우편번호는?"],
              "facts": [
    {"answer": "27미터입니다.", "key": "27미터", "statements": ["별무리섬 등대의 높이는 27미터이다."],
     "questions": ["별무리섬 등대의 높이는?"], "dev": ["등대 꼭대기까지 몇 미터?"], "held_out": ["등대는 얼마나 높나요?"]},
    {"answer": "윤가람입니다.", "key": "윤가람", "questions": ["등대지기는 누구인가요?"],
     "dev": ["등대를 돌보는 분은?"], "held_out": ["등대를 지키는 사람은?"]},
    {"answer": "달빛귤입니다.", "questions": ["특산물은 무엇인가요?"]},
    {"answer": "8월 셋째 주입니다.", "questions": ["축제는 언제 열리나요?"]},
]}
TINY_QUESTIONS = [f["questions"][0] for f in TINY_FACTS["facts"]]
TINY_ANSWERS = [f["answer"] for f in TINY_FACTS["facts"]]
TINY_RETENTION = {"text": ["Water boils at 100 degrees Celsius at sea level."],
                  "prompts": ["The capital of France is", "한국의 수도는"],
                  "facts": [{"prompt": "The capital of Japan is", "keys": ["Tokyo"]},
                            {"prompt": "The largest planet is", "keys": ["Jupiter"]}]}
# Four openings, every second one held aside for dev: two rehearsal texts to train on; and two keyed
# general facts (rehearsal.facts), of which SmolLM2 states only Greece's capital right: a third text.
TINY_REHEARSAL = {"prompts": ["The Roman Empire reached", "Dogs are loyal animals that", "부산은 항구 도시로",
                              "To bake bread, first"],
                  "facts": [{"prompt": "The capital of Greece is", "keys": ["Athens"]},
                            {"prompt": "Five times six equals", "keys": ["30"]}]}
# Per epoch: 4 pairs + 1 refusal pair (refusal_ratio 0.25 x 4) + 1 statement, and 2 rehearsal texts
# (ratio 0.4 x 6): 4 batches of 2.


def stages(*names):
    """The named stages in the order dvc repro runs them."""
    return [s for s in STAGES if s in names]


def venv_env():
    """Stage commands call `python`: make it this interpreter (the venv's)."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def run(args, cwd, check=True, stdin=None):
    result = subprocess.run(args, cwd=cwd, env=venv_env(), capture_output=True, text=True, input=stdin)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(map(str, args))} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def dvc(*args, cwd, check=True):
    return run([sys.executable, "-m", "dvc", *args], cwd, check)


def stages_run(output):
    """The pipeline's stages that ran, in order; check_params (seconds of checking params.yaml, rerun by
    any change of it or of the code) is left out: test_check_params_runs_first_and_stops_a_misspelt_key."""
    return [m for m in re.findall(r"Running stage '(\w+)'", output) if m != "check_params"]


def edit_params(repo, section, key, value):
    """Set params[section][key] (section None: a top-level key)."""
    params = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))
    (params[section] if section else params)[key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")


# The tests on tiny_repo run `dvc repro` (minutes): each is marked slow. The ones on an empty
# folder run one stage to its first error (seconds) and stay in `make test-fast`.
@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory):
    """A copy of the repo's committed and new files, made tiny, committed to a fresh git repo."""
    repo = tmp_path_factory.mktemp("repo")
    files = run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], REPO).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, repo / name)
    (repo / "data" / "facts.yaml").write_text(yaml.safe_dump(TINY_FACTS, allow_unicode=True), encoding="utf-8")
    (repo / "data" / "retention.yaml").write_text(yaml.safe_dump(TINY_RETENTION, allow_unicode=True), encoding="utf-8")
    (repo / "data" / "rehearsal_prompts.yaml").write_text(yaml.safe_dump(TINY_REHEARSAL, allow_unicode=True),
                                                          encoding="utf-8")
    params = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))
    # No checkpoint (one of the 135M model is ~1.6 GB, 3-6 s to write) but in the test that kills a run.
    params["finetune"].update(epochs=2, batch_size=2, warmup_steps=0, log_every=1, checkpoint_minutes=0,
                              checkpoint_every=0, rehearsal_ratio=0.4)
    params["rehearsal"].update(samples_per_prompt=1, new_tokens=6, dev_every=2)
    params["evaluate"].update(extra_new_tokens=2, retention_new_tokens=4)
    params["interpolate"].update(weights=[1.0, 0.8])  # two candidates are enough to choose between
    params["generate_dataset"].update(refusal_ratio=0.25)  # one refusal pair: the R-Tuning data path
    (repo / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    for args in (["init", "-q"], ["add", "-A"],
                 ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"]):
        run(["git", *args], repo)
    return repo


def copy_repo(source, destination):
    """Copy a repo for a test that changes it. Files DVC protects (read-only: its cache and the model
    outputs linked to it) are hard-linked, not copied: DVC replaces them, never writes into them, and a
    copy would cost ~1 GB of disk per test."""
    def link_or_copy(src, dst):
        if os.stat(src).st_mode & stat.S_IWUSR:
            shutil.copy2(src, dst)
        else:
            os.link(src, dst)
    shutil.copytree(source, destination, symlinks=True, copy_function=link_or_copy)


# What a run leaves that must be identical when it is repeated or resumed.
RESULT_FILES = ["dvc.lock", "metrics/dataset.json", "metrics/baseline.json", "metrics/baseline_answers.csv",
                "metrics/baseline_chat.json", "metrics/baseline_chat_answers.csv",
                "metrics/interpolation.json", "metrics/interpolation_curve.json",
                "metrics/final.json", "metrics/final_answers.csv", "metrics/delta.json", "metrics/report.md",
                "metrics/report.html", "metrics/loss.png", "metrics/finetune/metrics.json",
                "metrics/finetune/plots/metrics/train/loss.tsv", "metrics/finetune/plots/metrics/train/lr.tsv",
                "metrics/finetune/plots/metrics/dev/answer_nll.tsv"]


def results(repo):
    return {name: (repo / name).read_bytes() for name in RESULT_FILES}


@pytest.fixture(scope="module")
def first_repro(tiny_repo):
    out = dvc("repro", cwd=tiny_repo).stdout
    return out, results(tiny_repo)


@pytest.mark.slow
def test_repro_runs_every_stage_and_writes_every_output(tiny_repo, first_repro):
    assert stages_run(first_repro[0]) == STAGES
    records = [json.loads(line) for line in (tiny_repo / "data/trained_qa.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["question"] for r in records] == TINY_QUESTIONS + TINY_FACTS["unknown_train"][:1]
    assert [r.get("refusal", False) for r in records] == [False] * 4 + [True] and records[-1]["answer"] == "모르겠습니다."
    heldout = [json.loads(line) for line in (tiny_repo / "data/heldout_qa.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(r["question"], r["key"]) for r in heldout] == [("등대는 얼마나 높나요?", "27미터"), ("등대를 지키는 사람은?", "윤가람")]
    assert "supervised:" in (tiny_repo / "data/preview.md").read_text(encoding="utf-8")
    for model in ("base", "finetuned", "final"):  # linked to DVC's cache entry, not a second copy on disk
        assert (tiny_repo / "models" / model / "model.safetensors").stat().st_nlink >= 2
    dataset = json.loads((tiny_repo / "metrics/dataset.json").read_text(encoding="utf-8"))
    coverage = dataset.pop("coverage")
    assert dataset == {
        "backend": "template", "requested": 4, "accepted": 4, "rejected": {}, "statements": 1,
        "dev_questions": 2, "heldout_questions": 2, "unknown_questions": 2, "unknown_dev_questions": 1,
        "unknown_train_questions": 2, "refusal_pairs": 1, "dev_and_heldout_from": "data/facts.yaml"}
    # One question per fact: every fact is thin, and the run says so before training.
    assert (coverage["facts"], coverage["facts_with_one_phrasing"], coverage["facts_with_dev_questions"]) == (4, 4, 2)
    assert coverage["warnings"][0].startswith("4 of 4 facts have fewer than 3 training phrasings")
    assert "warning: 4 of 4 facts have fewer than 3 training phrasings" in first_repro[0]
    assert "6 task examples + 2 rehearsal texts (kl) per epoch" in first_repro[0]

    baseline = json.loads((tiny_repo / "metrics/baseline.json").read_text())
    final = json.loads((tiny_repo / "metrics/final.json").read_text())
    assert baseline.keys() == final.keys() == {"trained", "dev", "heldout", "unknown", "unknown_dev", "gate",
                                               "retention", "general"}
    for name in baseline.keys() - {"general"}:
        assert baseline[name].keys() == final[name].keys()
    assert final["general"].keys() == {"prompts", "right", "right_before", "kept", "lost"}
    assert {"right", "abstained", "wrong"} <= final["heldout"].keys()
    assert final["heldout"]["right"] + final["heldout"]["abstained"] + final["heldout"]["wrong"] == pytest.approx(1)
    assert baseline["trained"]["questions"] == 4 and baseline["dev"]["questions"] == baseline["heldout"]["questions"] == 2
    assert {"exact_match", "contains_answer", "char_f1", "answer_nll", "ended_with_eos"} <= final["trained"].keys()
    # One answer per fact here: no variants to accept, so both exact matches are one number.
    assert (tiny_repo / "data/answer_variants.jsonl").read_text() == ""
    assert final["trained"]["exact_match_any_answer"] == final["trained"]["exact_match"]
    assert "states_key_fact" in final["heldout"] and "states_key_fact" not in final["trained"]
    assert baseline["retention"]["answers_changed"] == 0 and final["retention"]["prompts"] == 2
    assert baseline["unknown"].keys() == {"questions", "abstained", "invented", "gated", "mean_generated_tokens"}
    assert final["unknown"]["questions"] == 2
    # SmolLM2 has a chat template: the held-out and unknown questions asked through it as well.
    chat = json.loads((tiny_repo / "metrics/baseline_chat.json").read_text())
    assert chat.keys() == {"heldout", "unknown"} and chat["heldout"]["questions"] == 2
    chat_table = pd.read_csv(tiny_repo / "metrics/baseline_chat_answers.csv", keep_default_na=False)
    assert list(chat_table["set"]) == ["heldout"] * 2 + ["unknown"] * 2
    assert "## Before, on the base model's own chat template" in (tiny_repo / "metrics/report.md").read_text()
    # Two epochs on four answers must lower the answer loss a lot; generation may still be off.
    assert final["trained"]["answer_nll"] < baseline["trained"]["answer_nll"] / 2
    delta = json.loads((tiny_repo / "metrics/delta.json").read_text())
    assert delta["unknown"].keys() == {"abstained", "invented"} and delta["general"].keys() == {"right"}
    assert delta["trained"]["answer_nll"] == pytest.approx(final["trained"]["answer_nll"] - baseline["trained"]["answer_nll"], abs=1e-4)

    for name in ("baseline_answers.csv", "final_answers.csv"):
        table = pd.read_csv(tiny_repo / "metrics" / name, keep_default_na=False)
        assert list(table["set"]) == (["trained"] * 4 + ["dev"] * 2 + ["heldout"] * 2 + ["unknown"] * 2
                                      + ["unknown_dev"] + ["retention"] * 2 + ["general"] * 2)
        assert list(table["expected"][:4]) == TINY_ANSWERS  # the refusal pair is taught, not tested
        # The gate: an answer is the refusal exactly where its own NLL is above the chosen threshold.
        gate = json.loads((tiny_repo / "metrics" / name.replace("_answers.csv", ".json")).read_text())["gate"]
        threshold = gate["threshold"]
        assert gate["wrong_cost"] == 1  # evaluate.gate_wrong_cost, recorded beside the threshold it chose
        typed = read_answers(tiny_repo / "metrics" / name)
        asked = typed[typed["set"].isin(["trained", "dev", "heldout", "unknown", "unknown_dev"])]
        assert list(asked["gated"]) == [threshold is not None and n > threshold for n in asked["own_answer_nll"]]
        assert (asked.loc[asked["gated"], "generated"] == "모르겠습니다.").all()
    report = (tiny_repo / "metrics/report.html").read_text(encoding="utf-8")
    assert all(q in report for q in TINY_QUESTIONS + TINY_FACTS["unknown"] + TINY_RETENTION["prompts"])
    assert "Unknown questions (not in the data)" in report
    unknown = [json.loads(line) for line in (tiny_repo / "data/unknown_qa.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["question"] for r in unknown] == TINY_FACTS["unknown"] and all("q_ids" in r and "input_ids" not in r for r in unknown)
    assert "data:image/png;base64," in report
    assert "![" in (tiny_repo / "metrics/report.md").read_text(encoding="utf-8")

    loss = pd.read_csv(tiny_repo / "metrics/finetune/plots/metrics/train/loss.tsv", sep="\t")
    assert list(loss["step"]) == list(range(8))  # 2 epochs x 4 batches
    assert loss["loss"].notna().all()
    dev_loss = pd.read_csv(tiny_repo / "metrics/finetune/plots/metrics/dev/answer_nll.tsv", sep="\t")
    assert list(dev_loss["step"]) == [3, 7]  # the end of each epoch
    kept = json.loads((tiny_repo / "metrics/finetune/metrics.json").read_text())
    lowest = 1 + int(dev_loss["answer_nll"].idxmin())
    assert (kept["kept_epoch"], kept["kept_by"]) == (lowest, "lowest dev answer loss")


@pytest.mark.slow
def test_every_weight_was_trained_and_the_model_loads(tiny_repo, first_repro):
    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained(tiny_repo / "models/base").state_dict()
    tuned = AutoModelForCausalLM.from_pretrained(tiny_repo / "models/finetuned").state_dict()
    assert base.keys() == tuned.keys()
    unchanged = [name for name in base if torch.equal(base[name], tuned[name])]
    assert unchanged == []


@pytest.mark.slow
def test_held_out_questions_and_the_retention_probe_never_reach_training(tiny_repo, first_repro, tmp_path):
    """What finetune learns from (pairs, statements, rehearsal) holds no held-out question and none of
    the retention probe; and finetune and interpolate train and choose the same weights without those
    files at all."""
    data = tiny_repo / "data"
    learned = [r["question"] + r["answer"] for r in map(json.loads, (data / "trained_qa.jsonl").read_text(encoding="utf-8").splitlines())]
    learned += [json.loads(line)["text"] for name in ("statements_qa.jsonl", "rehearsal.jsonl")
                for line in (data / name).read_text(encoding="utf-8").splitlines()]
    assert len(learned) == 4 + 1 + 1 + 2 + 1  # pairs, the refusal pair, the statement, rehearsal texts, a fact
    assert learned[-1].startswith("The capital of Greece is Athens")  # the fact the base model knows
    unseen = ([q for f in TINY_FACTS["facts"] for q in f.get("held_out", []) + f.get("dev", [])]
              + TINY_FACTS["unknown"] + TINY_FACTS["unknown_dev"] + TINY_FACTS["unknown_train"][1:]
              + TINY_RETENTION["text"] + TINY_RETENTION["prompts"] + [f["prompt"] for f in TINY_RETENTION["facts"]])
    assert [(u, t) for u in unseen for t in learned if u in t] == []

    repo = tmp_path / "repo"
    copy_repo(tiny_repo, repo)
    for name in ("data/heldout.jsonl", "data/heldout_qa.jsonl", "data/retention.yaml"):
        (repo / name).unlink()
    for stage in ("finetune", "interpolate"):
        run([sys.executable, f"stages/{stage}.py"], repo)
    for model in ("finetuned", "final"):
        ours, original = (load_file(r / "models" / model / "model.safetensors") for r in (repo, tiny_repo))
        assert all(torch.equal(ours[name], original[name]) for name in original), model


@pytest.mark.slow
def test_rehearsal_learned_by_its_tokens_instead_of_distilled_trains_otherwise(tiny_repo, first_repro, tmp_path):
    """finetune.rehearsal_loss ce against the default kl: the same examples and batches, the rehearsal
    rows learned from their sampled tokens instead of the base model's distributions."""
    repo = tmp_path / "repo"
    copy_repo(tiny_repo, repo)
    edit_params(repo, "finetune", "rehearsal_loss", "ce")
    out = run([sys.executable, "stages/finetune.py"], repo).stdout
    assert "task examples + 2 rehearsal texts (ce) per epoch" in out
    learned, distilled, base = (load_file(path / "model.safetensors") for path in (
        repo / "models/finetuned", tiny_repo / "models/finetuned", tiny_repo / "models/base"))
    assert any(not torch.equal(learned[name], distilled[name]) for name in distilled)
    assert any(not torch.equal(learned[name], base[name]) for name in base)


@pytest.mark.slow
def test_final_model_is_the_interpolation_chosen_on_dev(tiny_repo, first_repro):
    params = yaml.safe_load((tiny_repo / "params.yaml").read_text(encoding="utf-8"))["interpolate"]
    curve = json.loads((tiny_repo / "metrics/interpolation_curve.json").read_text())
    chosen = json.loads((tiny_repo / "metrics/interpolation.json").read_text())
    assert [point["weight"] for point in curve] == sorted(params["weights"], reverse=True)
    best = max(point["dev_states_key_fact"] for point in curve)
    assert chosen["chosen_weight"] == min(p["weight"] for p in curve if p["dev_states_key_fact"] >= best - params["tolerance"])
    dev = (tiny_repo / "data/dev_qa.jsonl").read_text(encoding="utf-8").splitlines()
    assert chosen["chosen_on"].startswith(f"{len(dev)} dev questions (data/dev_qa.jsonl)")
    assert chosen["chosen_on_questions"] == len(dev)
    a = chosen["chosen_weight"]
    base, tuned, final = (load_file(tiny_repo / "models" / m / "model.safetensors") for m in ("base", "finetuned", "final"))
    for name in final:
        torch.testing.assert_close(final[name], base[name] + a * (tuned[name] - base[name]), rtol=0, atol=1e-6, msg=name)


def test_rehearsal_prompts_touching_the_retention_probe_are_refused(tmp_path):
    (tmp_path / "data").mkdir()
    shutil.copy(REPO / "params.yaml", tmp_path)
    shutil.copy(REPO / "data/retention.yaml", tmp_path / "data")
    (tmp_path / "data/rehearsal_prompts.yaml").write_text(yaml.safe_dump({"prompts": [
        "The capital of France is", "Dogs are loyal animals that", "Dogs are loyal animals that", "",
        "The fastest land animal is the cheetah, which"], "facts": [
        {"prompt": "The capital of Greece is", "keys": ["Athens"]},
        {"prompt": "The capital city of Italy,", "keys": ["rome"]},
        {"prompt": "The capital of Japan is", "keys": ["Tokio"]},
        {"prompt": "Dogs are loyal animals that", "keys": ["bark"]},
        {"prompt": "The capital of Peru is", "keys": []},
        {"prompt": " ", "keys": ["Lima"]}]}), encoding="utf-8")
    result = run([sys.executable, REPO / "stages/make_rehearsal.py"], tmp_path, check=False)
    assert result.returncode != 0
    # A rehearsed fact with a key of the probe's facts would inflate general facts kept.
    assert "facts[0]" not in result.stderr
    assert "facts[1]: key 'rome' is a key of the retention probe's facts" in result.stderr
    assert "facts[2]: 'The capital of Japan is' overlaps the retention probe" in result.stderr
    assert "facts[3]: 'Dogs are loyal animals that' is there twice" in result.stderr
    assert "facts[4]: expected {prompt: text, keys: [non-empty texts]}" in result.stderr
    assert "facts[5]: expected a non-empty string as its prompt" in result.stderr
    assert ("data/rehearsal_prompts.yaml: prompts[0]: 'The capital of France is' overlaps the retention probe"
            in result.stderr)
    assert "prompts[4]: 'The fastest land animal is the cheetah, which' overlaps the retention probe" in result.stderr
    assert "data/rehearsal_prompts.yaml: prompts[2]: 'Dogs are loyal animals that' is there twice" in result.stderr
    assert "data/rehearsal_prompts.yaml: prompts[3]: expected a non-empty string" in result.stderr
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["rehearsal_prompts.yaml", "retention.yaml"]


def test_rehearsing_facts_needs_a_facts_list(tmp_path):
    (tmp_path / "data").mkdir()
    shutil.copy(REPO / "data/retention.yaml", tmp_path / "data")
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["rehearsal"]["facts"] = True
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    (tmp_path / "data/rehearsal_prompts.yaml").write_text(yaml.safe_dump({"prompts": TINY_REHEARSAL["prompts"]}),
                                                          encoding="utf-8")
    result = run([sys.executable, REPO / "stages/make_rehearsal.py"], tmp_path, check=False)
    assert result.returncode != 0
    assert "rehearsal.facts is true, but data/rehearsal_prompts.yaml has no 'facts' list" in result.stderr
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["rehearsal_prompts.yaml", "retention.yaml"]


def test_known_facts_are_trained_on_never_dev_and_numbered_after_the_openings():
    from stages.make_rehearsal import rehearsal_sets
    texts = [{"prompt_index": i // 2, "text": f"opening {i // 2}, sample {i % 2}"} for i in range(8)]  # 4 openings
    known = [{"prompt_index": 1, "text": "The capital of Greece is Athens."}]  # the 2nd fact of the list
    train, dev = rehearsal_sets(texts, known, openings=4, dev_every=2)
    assert [r["text"] for r in dev] == ["opening 1, sample 0", "opening 1, sample 1", "opening 3, sample 0",
                                        "opening 3, sample 1"]
    assert [r["id"] for r in train] == [0, 1, 4, 5, 8] and [r["id"] for r in dev] == [2, 3, 6, 7]
    assert train[-1] == {"prompt_index": 5, "text": "The capital of Greece is Athens.", "id": 8}
    # Without facts, the texts and their ids are what they were before the facts existed.
    train, dev = rehearsal_sets([dict(r) for r in texts], [], openings=4, dev_every=2)
    assert [r["id"] for r in train + dev] == [0, 1, 4, 5, 2, 3, 6, 7]


def test_only_facts_whose_continuation_states_a_key_are_rehearsed(embedded_tokenizer):
    """The key must be in what the base model wrote, not in the opening it was given."""
    from stages.make_rehearsal import known_facts
    facts = [{"prompt": "The capital of Greece is", "keys": ["Athens"]},
             {"prompt": "The capital of Kenya is", "keys": ["Nairobi"]},
             {"prompt": "Romeo and Juliet was written by", "keys": ["Juliet"]},
             {"prompt": "Five times six equals", "keys": ["30"]}]
    written = [" Athens.", " Mombasa.", " a poet.", " 300."]
    records = [{"input_ids": embedded_tokenizer(f["prompt"] + w)["input_ids"]} for f, w in zip(facts, written)]
    assert known_facts(records, facts, embedded_tokenizer) == [records[0]]


@pytest.mark.slow
def test_check_params_runs_first_and_stops_a_misspelt_key(tiny_repo, first_repro, tmp_path):
    assert re.findall(r"Running stage '(\w+)'", first_repro[0])[0] == "check_params"
    repo = tmp_path / "repo"
    copy_repo(tiny_repo, repo)
    # DVC refuses -S finetune.epoch=2 and suggests +finetune.epoch=2, which no other stage declares.
    failed = dvc("exp", "run", "-S", "+finetune.epoch=2", cwd=repo, check=False)
    assert failed.returncode != 0
    assert "params.yaml: finetune.epoch is not a known key (did you mean 'epochs'?)" in failed.stderr + failed.stdout
    assert stages_run(failed.stdout) == []


@pytest.mark.slow
def test_second_repro_does_nothing(tiny_repo, first_repro):
    out = dvc("repro", cwd=tiny_repo).stdout
    assert stages_run(out) == []
    assert "up to date" in out


@pytest.mark.slow
def test_finetune_killed_midway_resumes_and_ends_as_if_never_killed(tiny_repo, first_repro):
    checkpoint = tiny_repo / "models/checkpoints/finetune/checkpoint.pt"
    params = tiny_repo / "params.yaml"
    original = params.read_text(encoding="utf-8")
    # One checkpoint, halfway (step 4 of 8): enough to kill the run after it and resume. A key that
    # changes no numbers, so dvc.yaml does not list it and DVC sees no change.
    edit_params(tiny_repo, "finetune", "checkpoint_every", 4)
    try:  # the shared tiny repo gets its params back, whatever fails below
        run_ = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "--force", "-s", "finetune"], cwd=tiny_repo,
                                env=venv_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        deadline = time.monotonic() + 300
        while not checkpoint.exists() and run_.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(run_.pid, signal.SIGKILL)  # dvc and the stage under it, with no chance to clean up
        run_.wait()
        assert checkpoint.exists(), "finetune finished or failed before its first checkpoint"
        assert not (tiny_repo / "models/finetuned").exists()  # no half-written model

        # A checkpoint made with other params is refused, not silently resumed.
        with_checkpoints = params.read_text(encoding="utf-8")
        edit_params(tiny_repo, "finetune", "lr", 2 * yaml.safe_load(with_checkpoints)["finetune"]["lr"])  # another lr
        refused = run([sys.executable, "stages/finetune.py"], tiny_repo, check=False)
        params.write_text(with_checkpoints, encoding="utf-8")
        assert refused.returncode != 0
        assert "refusing to resume" in refused.stderr and "finetune.lr" in refused.stderr

        # --force: else DVC checks the uninterrupted run's model out of its cache (dvc.lock knows it);
        # after a crash in a first run there is none, and plain `dvc repro` resumes the same way.
        out = dvc("repro", "--force", "-s", "finetune", cwd=tiny_repo).stdout
    finally:
        params.write_text(original, encoding="utf-8")
    assert "resuming from models/checkpoints/finetune/checkpoint.pt at step" in out
    assert stages_run(out) == ["finetune"]
    assert results(tiny_repo) == first_repro[1]  # same loss curve, weights (dvc.lock) and metrics
    assert not checkpoint.parent.exists()


@pytest.mark.slow
def test_forced_rerun_of_every_stage_after_the_model_is_byte_identical(tiny_repo, first_repro):
    # All but prepare_model (~30 s of GGUF reading): that it writes the same model again is checked
    # by the seed edit below, after which nothing that reads only the model reruns.
    assert stages_run(dvc("repro", "--force", "--single-item", *STAGES[1:], cwd=tiny_repo).stdout) == STAGES[1:]
    assert results(tiny_repo) == first_repro[1]


@pytest.mark.parametrize("edit, expected", [
    # A key that changes the weights: prepare_model and generate_dataset read the seed too (both write
    # the same outputs again); the base model is not evaluated again. (That finetune lists every such
    # key, lr included, is checked without a run: tests/test_dvc_deps.py.)
    ((None, "seed", 7), stages("prepare_model", "generate_dataset", "finetune", "interpolate", "final_eval")),
    # no retraining (32: every question still in one batch, so the reruns take no longer than the first)
    (("evaluate", "batch_size", 32), stages("baseline_eval", "interpolate", "final_eval")),
    # the gate's cost: answered as before, so interpolate's generations are not run again
    (("evaluate", "gate_wrong_cost", 0.5), stages("baseline_eval", "final_eval")),
    # a weight none of the defaults is, so the final model changes; no retraining
    (("interpolate", "weights", [0.5]), stages("interpolate", "final_eval")),
    # how often finetune logs changes no numbers, so it reruns nothing (nor do the checkpoint_* keys:
    # tests/test_dvc_deps.py checks dvc.yaml lists none of training.CHANGES_NO_NUMBERS)
    (("finetune", "log_every", 3), []),
])
@pytest.mark.slow
def test_a_param_edit_reruns_only_the_stages_that_read_it(tiny_repo, first_repro, edit, expected, tmp_path):
    before = results(tiny_repo)
    with undone(tiny_repo, tmp_path):
        edit_params(tiny_repo, *edit)
        ran = stages_run(dvc("repro", cwd=tiny_repo).stdout)
        report_inputs_changed = any((tiny_repo / name).read_bytes() != before[name] for name in REPORT_INPUTS)
        assert ran == expected + (["report"] if report_inputs_changed else [])
    assert results(tiny_repo) == before


@pytest.mark.parametrize("module, expected", [
    # a metric: the evaluations (interpolate chooses by one), the report and make_rehearsal (which keeps
    # the keyed facts the base model states), never training
    ("llm_fft/metrics.py", ["make_rehearsal", "baseline_eval", "interpolate", "final_eval", "report"]),
    ("llm_fft/report.py", ["report"]),  # the report's look: nothing is evaluated again
    ("llm_fft/nll.py", ["baseline_eval", "finetune", "interpolate", "final_eval"]),  # finetune's dev loss
    ("llm_fft/facts.py", ["generate_dataset"]),  # the facts loader: what it writes is compared, not rerun
    ("llm_fft/prompts.py", ["prepare_model", "generate_dataset", "parse_qa", "make_rehearsal", "baseline_eval",
                            "interpolate", "final_eval"]),  # how text becomes tokens: never finetune itself
])
@pytest.mark.slow
def test_editing_a_module_changes_only_the_stages_that_import_it(tiny_repo, first_repro, module, expected):
    path = tiny_repo / module
    original = path.read_text(encoding="utf-8")
    path.write_text(original + "\n# an edit\n", encoding="utf-8")
    changed = json.loads(dvc("status", "--json", cwd=tiny_repo).stdout)
    path.write_text(original, encoding="utf-8")
    # check_params imports nearly every module (the stages' specs): it reruns too, in seconds
    checks = ["check_params"] if module in yaml.safe_load((tiny_repo / "dvc.yaml").read_text())["stages"][
        "check_params"]["deps"] else []
    assert sorted(changed) == sorted(expected + checks)
    assert dvc("status", cwd=tiny_repo).stdout.strip() == "Data and pipelines are up to date."


@pytest.mark.slow
def test_editing_a_message_of_the_facts_loader_reruns_generate_dataset_alone(tiny_repo, first_repro, tmp_path):
    facts_loader = tiny_repo / "llm_fft/facts.py"
    original = facts_loader.read_text(encoding="utf-8")
    assert '"empty answer"' in original
    with undone(tiny_repo, tmp_path):
        try:
            facts_loader.write_text(original.replace('"empty answer"', '"the answer is empty"'), encoding="utf-8")
            # generate_dataset writes the same files again, so nothing after it reruns
            assert stages_run(dvc("repro", cwd=tiny_repo).stdout) == ["generate_dataset"]
        finally:
            facts_loader.write_text(original, encoding="utf-8")
    assert results(tiny_repo) == first_repro[1]


@pytest.mark.slow
def test_editing_the_facts_reruns_everything_from_generate_dataset(tiny_repo, first_repro, tmp_path):
    facts = tiny_repo / "data/facts.yaml"
    with undone(tiny_repo, tmp_path):
        facts.write_text(facts.read_text(encoding="utf-8").replace("27미터", "28미터"), encoding="utf-8")
        assert stages_run(dvc("repro", cwd=tiny_repo).stdout) == [s for s in STAGES[1:] if s not in REHEARSAL_STAGES]
    assert results(tiny_repo) == first_repro[1]


# What a test that edits tiny_repo in place may change besides DVC's cache: the sources it edits,
# the lock and every committed result (metrics/, DVCLive's curves included).
STATE = ["params.yaml", "data/facts.yaml", "dvc.lock", "metrics"]


@contextlib.contextmanager
def undone(repo, tmp_path):
    """Undo whatever the body edits and reruns in repo, running no stage: the state is put back from
    a copy, and the cached outputs (models, data) are checked out of DVC's cache as dvc.lock names them."""
    saved = tmp_path / "state"
    (saved / "data").mkdir(parents=True)
    for name in STATE:
        (shutil.copytree if (repo / name).is_dir() else shutil.copy2)(repo / name, saved / name)
    try:
        yield
    finally:
        for name in STATE:
            shutil.rmtree(repo / name) if (repo / name).is_dir() else (repo / name).unlink(missing_ok=True)
            (shutil.copytree if (saved / name).is_dir() else shutil.copy2)(saved / name, repo / name)
        dvc("checkout", "--force", cwd=repo)
    assert dvc("status", cwd=repo).stdout.strip() == "Data and pipelines are up to date."


def test_bad_dataset_fails_naming_the_line_and_writes_nothing(tmp_path):
    (tmp_path / "data").mkdir()
    shutil.copy(REPO / "params.yaml", tmp_path)
    (tmp_path / "data/dataset.txt").write_text(
        "<|question|>\nQ1?\n<|answer|>\nA1.\n\n<|question|>\nQ2 has no answer\n", encoding="utf-8")
    result = run([sys.executable, REPO / "stages/parse_qa.py"], tmp_path, check=False)
    assert result.returncode != 0
    assert "data/dataset.txt:6: block has no <|answer|>" in result.stderr
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["dataset.txt"]


# Your own data about something else than the facts file: the file backend with its own dev and
# held-out questions (one of them without a key fact).
OWN_PAIRS = [{"question": "우리 빵집의 이름은?", "answer": "달빛제과입니다."},
             {"question": "빵집은 몇 시에 문을 여나요?", "answer": "아침 7시에 엽니다."},
             {"question": "가장 잘 팔리는 빵은?", "answer": "소금빵입니다."}]
OWN_DEV = [{"question": "빵집 이름이 뭐예요?", "answer": "달빛제과입니다.", "key": "달빛제과"}]
OWN_HELDOUT = [{"question": "빵집 문 여는 시간은?", "answer": "아침 7시에 엽니다.", "key": "7시"},
               {"question": "제일 인기 있는 빵은?", "answer": "소금빵입니다.", "key": "소금빵"}]
OWN_UNKNOWN = ["빵집 사장님의 이름은?"]
OWN_UNKNOWN_DEV = ["빵집은 몇 년에 문을 열었나요?"]
OWN_UNKNOWN_TRAIN = ["빵집에서 일하는 사람은 몇 명인가요?"]


def write_own_data(folder, dev=OWN_DEV, heldout=OWN_HELDOUT, unknown=OWN_UNKNOWN, unknown_train=OWN_UNKNOWN_TRAIN):
    """The file backend's six files, in the places params.yaml names, and the backend switched on."""
    (folder / "data").mkdir(exist_ok=True)
    (folder / "data/my_dataset.txt").write_text(json.dumps(OWN_PAIRS, ensure_ascii=False), encoding="utf-8")
    for name, rows in (("my_dev.jsonl", dev), ("my_heldout.jsonl", heldout)):
        (folder / "data" / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                            encoding="utf-8")
    for name, questions in (("my_unknown.txt", unknown), ("my_unknown_dev.txt", OWN_UNKNOWN_DEV),
                            ("my_unknown_train.txt", unknown_train)):
        (folder / "data" / name).write_text("# not in the data\n" + "".join(q + "\n" for q in questions),
                                            encoding="utf-8")
    if not (folder / "params.yaml").exists():
        shutil.copy(REPO / "params.yaml", folder)
        shutil.copy(REPO / "data/facts.yaml", folder / "data")  # params.yaml names it, whatever the backend
    edit_params(folder, "generate_dataset", "backend", "file")


def test_the_shipped_example_files_work_with_the_default_params(tmp_path):
    """What the README's `dvc exp run -S generate_dataset.backend=file` trains on: the example files in
    data/ are enough for every default (refusal pairs included), and their thinness is warned about."""
    shutil.copytree(REPO / "data", tmp_path / "data", ignore=shutil.ignore_patterns("*.jsonl", "*.safetensors",
                                                                                   "dataset.txt"))
    for name in ("my_dev.jsonl", "my_heldout.jsonl"):
        shutil.copy(REPO / "data" / name, tmp_path / "data")
    shutil.copy(REPO / "params.yaml", tmp_path)
    edit_params(tmp_path, "generate_dataset", "backend", "file")
    printed = run([sys.executable, REPO / "stages/generate_dataset.py"], tmp_path).stdout
    report = json.loads((tmp_path / "metrics/dataset.json").read_text(encoding="utf-8"))
    assert report["refusal_pairs"] >= 1 and report["unknown_dev_questions"] >= 1 and report["heldout_questions"] >= 1
    assert "facts have fewer than 3 training phrasings" in printed


def test_rewordings_and_answer_statements_join_your_file(tmp_path):
    """generate_dataset.rewordings rewrites data/dataset.txt with your pairs and their checked rewordings;
    statements_from_answers trains each answer as a statement; the coverage still counts your phrasings."""
    write_own_data(tmp_path)
    edit_params(tmp_path, "generate_dataset", "rewordings", 2)
    edit_params(tmp_path, "generate_dataset", "statements_from_answers", True)
    printed = run([sys.executable, REPO / "stages/generate_dataset.py"], tmp_path).stdout
    assert "3 question/answer pairs + 1 rule rewordings" in printed  # OWN_PAIRS end in 은? / 나요? / 은?
    trained, _ = read_pairs((tmp_path / "data/dataset.txt").read_bytes(), "data/dataset.txt")
    assert [p["question"] for p in trained] == [p["question"] for p in OWN_PAIRS] + ["빵집은 몇 시에 문을 여니?"]
    assert trained[-1]["answer"] == "아침 7시에 엽니다."
    statements = [json.loads(line)["text"] for line in (tmp_path / "data/statements.jsonl").read_text(encoding="utf-8").splitlines()]
    assert statements == [p["answer"] for p in OWN_PAIRS]
    report = json.loads((tmp_path / "metrics/dataset.json").read_text(encoding="utf-8"))
    assert report["rewordings"] == {"accepted": 1, "rejected": {"no rule for the question's ending": 2}}
    assert report["coverage"]["facts_with_one_phrasing"] == 3

    edit_params(tmp_path, "generate_dataset", "backend", "template")
    result = run([sys.executable, REPO / "stages/generate_dataset.py"], tmp_path, check=False)
    assert result.returncode != 0
    assert "generate_dataset.rewordings works with backend file" in result.stderr
    assert "generate_dataset.statements_from_answers works with backend file" in result.stderr


def facts_questions(path):
    facts = yaml.safe_load(path.read_text(encoding="utf-8"))["facts"]
    return {q for f in facts for name in ("questions", "dev", "held_out") for q in f.get(name, [])}


def test_own_data_is_judged_on_its_own_dev_and_held_out_files_and_never_on_the_facts_file(tmp_path):
    write_own_data(tmp_path)
    printed = run([sys.executable, REPO / "stages/generate_dataset.py"], tmp_path).stdout
    assert "warning: 3 of 3 facts have fewer than 3 training phrasings" in printed
    read = {name: [json.loads(line) for line in (tmp_path / f"data/{name}.jsonl").read_text(encoding="utf-8").splitlines()]
            for name in ("dev", "heldout", "statements")}
    assert (read["dev"], read["heldout"], read["statements"]) == (OWN_DEV, OWN_HELDOUT, [])
    report = json.loads((tmp_path / "metrics/dataset.json").read_text(encoding="utf-8"))
    assert (report["dev_questions"], report["heldout_questions"], report["unknown_questions"]) == (1, 2, 1)
    assert (tmp_path / "data/unknown.jsonl").read_text(encoding="utf-8") == '{"question": "빵집 사장님의 이름은?"}\n'
    assert (tmp_path / "data/unknown_dev.jsonl").read_text(encoding="utf-8") == '{"question": "빵집은 몇 년에 문을 열었나요?"}\n'
    assert (tmp_path / "data/refusals.jsonl").read_text(encoding="utf-8") == ""  # refusal_ratio 0 (the default)
    assert report["dev_and_heldout_from"] == {"dev": "data/my_dev.jsonl", "heldout": "data/my_heldout.jsonl"}
    # Three facts asked once each: the thin data is counted, and said before any training.
    assert (report["coverage"]["facts"], report["coverage"]["facts_with_one_phrasing"]) == (3, 3)
    assert "3 of 3 facts have fewer than 3 training phrasings ('달빛제과', '7시', '소금빵')" in report["coverage"]["warnings"][0]

    write_own_data(tmp_path, heldout=[])  # no held-out file of your own: none at all, never borrowed
    run([sys.executable, REPO / "stages/generate_dataset.py"], tmp_path)
    assert (tmp_path / "data/heldout.jsonl").read_text(encoding="utf-8") == ""
    assert json.loads((tmp_path / "metrics/dataset.json").read_text(encoding="utf-8"))["heldout_questions"] == 0


def generate_with_scripted_llm(folder, chat, **settings):
    """generate_dataset in folder with the llm_* settings pointing at a scripted OpenAI-compatible server
    on 127.0.0.1 (chat(body) -> Reply), plus the given generate_dataset settings. (printed, requests)"""
    from tests.openai_stub_server import ChatCompletionsServer
    with ChatCompletionsServer(chat) as server:
        for key, value in {"llm_transport": "http", "llm_base_url": server.base_url, "llm_model": "stub",
                           **settings}.items():
            edit_params(folder, "generate_dataset", key, value)
        out = run([sys.executable, REPO / "stages/generate_dataset.py"], folder).stdout
    return out, server.requests


def test_a_language_model_writes_held_out_questions_about_your_own_data(tmp_path):
    """generate_dataset.heldout_paraphrases over HTTP (a scripted server on 127.0.0.1): each reply is
    accepted or rejected with its reason and counted; accepted ones join your held-out pairs with their
    training pair's answer; a copy of a question already in the data never does."""
    from llm_fft.llm_writer import Reply
    replies = {"우리 빵집의 이름은?": "이 빵집은 어떤 이름으로 불리나요?",
               "빵집은 몇 시에 문을 여나요?": "빵집은 몇 시에 문을 여나요?",  # a copy: rejected
               "가장 잘 팔리는 빵은?": "소금빵입니다."}  # no question mark: rejected

    def chat(body):
        asked = body["messages"][-1]["content"].split("\n")[0].removeprefix("Question: ")
        return Reply(replies[asked], False)

    write_own_data(tmp_path)
    out, requests = generate_with_scripted_llm(tmp_path, chat, heldout_paraphrases=1, llm_max_attempts=1)
    assert len(requests) == 3 and "pair 2/3: rejected (taken)" in out
    heldout = [json.loads(line) for line in (tmp_path / "data/heldout.jsonl").read_text(encoding="utf-8").splitlines()]
    assert heldout == OWN_HELDOUT + [{"question": "이 빵집은 어떤 이름으로 불리나요?", "answer": "달빛제과입니다."}]
    report = json.loads((tmp_path / "metrics/dataset.json").read_text(encoding="utf-8"))
    assert report["heldout_questions"] == 3
    paraphrases = report["heldout_paraphrases"]
    assert (paraphrases["requested"], paraphrases["accepted"], paraphrases["attempts"]) == (3, 1, 3)
    assert {k: v for k, v in paraphrases["rejected"].items() if v} == {"taken": 1, "not_a_question": 1}
    # The facts file has its own held-out phrasings: asked with another backend, an error before any work.
    edit_params(tmp_path, "generate_dataset", "backend", "template")
    result = run([sys.executable, REPO / "stages/generate_dataset.py"], tmp_path, check=False)
    assert result.returncode != 0 and "heldout_paraphrases works with backend file" in result.stderr


def test_a_language_model_writes_training_phrasings_of_your_own_data(tmp_path):
    """generate_dataset.train_paraphrases over HTTP (a scripted server): accepted phrasings are trained
    with their pair's answer; a dev, held-out or unknown question, or a copy, never is, and every
    rejection is counted by its reason."""
    from llm_fft.llm_writer import Reply
    replies = {"우리 빵집의 이름은?": ["빵집 이름이 뭐예요?", "이 빵집은 어떤 이름으로 불리나요?"],  # 1st: a dev question
               # 1st: held-out; 2nd: accepted by the writer, but a near-copy of that held-out question
               "빵집은 몇 시에 문을 여나요?": ["빵집 문 여는 시간은?", "빵집 문 여는 시간은요?"],
               "가장 잘 팔리는 빵은?": ["빵집 사장님의 이름은?", ""]}  # about something else, then nothing

    def chat(body):
        asked = body["messages"][-1]["content"].split("\n")[0].removeprefix("Question: ")
        return Reply(replies[asked][body["seed"] - 123 - 2], False)  # seed + max_attempts + try

    write_own_data(tmp_path)
    out, requests = generate_with_scripted_llm(tmp_path, chat, train_paraphrases=1, llm_max_attempts=2)
    assert len(requests) == 6 and "3 question/answer pairs + 1 paraphrases" in out
    trained, _ = read_pairs((tmp_path / "data/dataset.txt").read_bytes(), "data/dataset.txt")
    assert trained == [{**p, "where": trained[i]["where"]} for i, p in enumerate(OWN_PAIRS)] + [
        {"question": "이 빵집은 어떤 이름으로 불리나요?", "answer": "달빛제과입니다.", "where": trained[3]["where"]}]
    report = json.loads((tmp_path / "metrics/dataset.json").read_text(encoding="utf-8"))
    paraphrases = report["train_paraphrases"]
    assert (paraphrases["requested"], paraphrases["accepted"], paraphrases["attempts"]) == (3, 1, 6)
    assert {k: v for k, v in paraphrases["rejected"].items() if v} == {
        "taken": 2, "not_about_pair": 1, "empty": 1, "too_close_to_an_evaluation_question": 1}
    assert report["coverage"]["facts_with_one_phrasing"] == 3  # your own phrasings: the warning stays
    assert [json.loads(line)["question"] for line in (tmp_path / "data/dev.jsonl").read_text(encoding="utf-8").splitlines()] \
        == [q["question"] for q in OWN_DEV]


def test_a_language_model_writes_answer_wordings_spread_over_your_phrasings(tmp_path):
    """generate_dataset.train_answer_variants over HTTP (a scripted server): a wording that keeps the
    fact (the key your dev or held-out file gives) is trained on another phrasing of its pair, never
    on a question that already has an answer; each rejection and each wording left without a phrasing
    is counted, and exact match accepts the wordings trained."""
    from llm_fft.llm_writer import ANSWER_SYSTEM_PROMPT, Reply
    replies = {"달빛제과입니다.": ["우리 빵집은 햇살제과입니다.", "달빛제과라는 이름입니다."],  # 1st: loses the key
               "아침 7시에 엽니다.": ["아침 7시에 엽니다", "매일 아침 7시에 문을 엽니다."],  # 1st: the answer again
               "소금빵입니다.": ["소금빵이 제일 잘 팔리나요?", ""]}  # a question, then nothing

    def chat(body):
        assert body["messages"][0]["content"] == ANSWER_SYSTEM_PROMPT
        answer = body["messages"][-1]["content"].split("\n")[1].removeprefix("Answer: ")
        return Reply(replies[answer][body["seed"] - 123 - 2 * 2], False)  # seed + 2 x max_attempts + try

    write_own_data(tmp_path)
    # One rule rewording (of the second pair's question): the only phrasing a wording can go to.
    out, requests = generate_with_scripted_llm(tmp_path, chat, train_answer_variants=1, rewordings=2,
                                               llm_max_attempts=2)
    assert len(requests) == 6
    assert ("3 question/answer pairs + 1 rule rewordings, 1 other wordings of answers trained on them (1 unused: too "
            "few phrasings; 0 answers with nothing to check left alone)") in out
    trained, _ = read_pairs((tmp_path / "data/dataset.txt").read_bytes(), "data/dataset.txt")
    assert [(p["question"], p["answer"]) for p in trained] == [(p["question"], p["answer"]) for p in OWN_PAIRS] + [
        ("빵집은 몇 시에 문을 여니?", "매일 아침 7시에 문을 엽니다.")]
    assert [json.loads(line) for line in (tmp_path / "data/answer_variants.jsonl").read_text(encoding="utf-8").splitlines()] \
        == [{"answers": ["아침 7시에 엽니다.", "매일 아침 7시에 문을 엽니다."]}]
    written = json.loads((tmp_path / "metrics/dataset.json").read_text(encoding="utf-8"))["train_answer_variants"]
    assert (written["requested"], written["accepted"], written["attempts"], written["unused_for_want_of_phrasings"]) \
        == (3, 2, 6, 1)
    assert {k: v for k, v in written["rejected"].items() if v} == {
        "loses_the_fact": 1, "same_answer": 1, "a_question": 1, "empty": 1}
    # Greedy replies repeat: asking for 2 wordings per answer at temperature 0 is an error before any request.
    edit_params(tmp_path, "generate_dataset", "train_answer_variants", 2)
    result = run([sys.executable, REPO / "stages/generate_dataset.py"], tmp_path, check=False)
    assert result.returncode != 0
    assert "generate_dataset.train_answer_variants = 2 with llm_temperature 0" in result.stderr


def test_bad_dev_and_held_out_files_fail_naming_every_line_and_write_nothing(tmp_path):
    def problems(dev, heldout, unknown=OWN_UNKNOWN, unknown_train=OWN_UNKNOWN_TRAIN):
        write_own_data(tmp_path, dev, heldout, unknown, unknown_train)
        inputs = sorted((tmp_path / "data").iterdir())
        result = run([sys.executable, REPO / "stages/generate_dataset.py"], tmp_path, check=False)
        assert result.returncode != 0 and result.stderr.startswith("error: bad input data:\n")
        assert sorted((tmp_path / "data").iterdir()) == inputs and not (tmp_path / "metrics").exists()
        return result.stderr.strip().split("\n")[1:]

    training_question = {"question": "우리 빵집의 이름은?", "answer": "달빛제과입니다."}
    bad_key = {"question": "빵집 문 여는 시간은?", "answer": "아침 7시에 엽니다.", "key": "8시"}
    assert problems(OWN_DEV + [training_question], [bad_key], ["우리 빵집의 이름은?"]) == [
        "data/my_dev.jsonl:2: dev question '우리 빵집의 이름은?' is also a training question (data/my_dataset.txt:1 "
        "($[0])): dev and held-out questions are never trained on",
        "data/my_heldout.jsonl:1: key '8시' does not appear in the answer '아침 7시에 엽니다.'",
        "data/my_unknown.txt:2: unknown question '우리 빵집의 이름은?' is also a training question "
        "(data/my_dataset.txt:1 ($[0])): the data answers it, so it is not unknown"]
    assert problems(OWN_DEV, [{"question": "가장 잘 팔리는 빵은", "answer": "소금빵입니다."},  # without its ?
                              {"question": "빵집 이름이 뭐예요?", "answer": "달빛제과입니다."}]) == [
        "data/my_heldout.jsonl:1: held-out question '가장 잘 팔리는 빵은' is also a training question "
        "(data/my_dataset.txt:1 ($[2])): dev and held-out questions are never trained on",
        "data/my_heldout.jsonl:2: held-out question '빵집 이름이 뭐예요?' is also a dev question "
        "(data/my_dev.jsonl:1): dev chooses the settings, held-out tests them: keep them apart"]
    # A training unknown question is never an evaluation one, nor a question the data answers.
    assert problems(OWN_DEV, OWN_HELDOUT, unknown_train=["빵집 사장님의 이름은?", "가장 잘 팔리는 빵은?"]) == [
        "data/my_unknown_train.txt:2: unknown question '빵집 사장님의 이름은?' is also an unknown question "
        "(data/my_unknown.txt:2): ask it once, in one file",
        "data/my_unknown_train.txt:3: unknown question '가장 잘 팔리는 빵은?' is also a training question "
        "(data/my_dataset.txt:1 ($[2])): the data answers it, so it is not unknown"]


def test_a_refusal_ratio_beyond_the_training_unknown_questions_is_an_error(tmp_path):
    write_own_data(tmp_path)
    edit_params(tmp_path, "generate_dataset", "refusal_ratio", 1.0)  # 3 pairs: 3 refusals wanted, 1 listed
    result = run([sys.executable, REPO / "stages/generate_dataset.py"], tmp_path, check=False)
    assert result.returncode != 0 and not (tmp_path / "metrics").exists()
    assert ("data/my_unknown_train.txt: generate_dataset.refusal_ratio = 1.0 asks for 3 refusal pairs (3 pairs), "
            "but the training unknown questions are 1") in result.stderr
    edit_params(tmp_path, "generate_dataset", "refusal_ratio", 0.34)
    run([sys.executable, REPO / "stages/generate_dataset.py"], tmp_path)
    assert (tmp_path / "data/refusals.jsonl").read_text(encoding="utf-8") == (
        '{"question": "빵집에서 일하는 사람은 몇 명인가요?", "answer": "모르겠습니다."}\n')


def test_bad_params_are_all_reported_before_any_work(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["finetune"]["lr"] = -1.0
    params["finetune"]["epoch"] = params["finetune"].pop("epochs")
    params["finetune"].update(fsdp=True, processes=1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    result = run([sys.executable, REPO / "stages/finetune.py"], tmp_path, check=False)
    assert result.returncode != 0
    assert "finetune.lr = -1.0 is out of range" in result.stderr
    assert "finetune.epoch is not a known key (did you mean 'epochs'?)" in result.stderr
    assert "finetune.epochs is missing" in result.stderr
    assert "finetune.fsdp shards the model over processes: set finetune.processes > 1" in result.stderr


@pytest.mark.slow
def test_non_finite_loss_stops_training_naming_the_step(tiny_repo, first_repro, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(tiny_repo / "models/base")
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")
    model.save_pretrained(tmp_path / "models/base")
    AutoTokenizer.from_pretrained(tiny_repo / "models/base").save_pretrained(tmp_path / "models/base")
    shutil.copy(tiny_repo / "params.yaml", tmp_path)
    (tmp_path / "data").mkdir()
    for name in ("trained_qa.jsonl", "statements_qa.jsonl", "rehearsal.jsonl", "rehearsal_teacher.safetensors", "dev_qa.jsonl"):
        shutil.copy(tiny_repo / "data" / name, tmp_path / "data")
    result = run([sys.executable, REPO / "stages/finetune.py"], tmp_path, check=False)
    assert result.returncode != 0
    assert "error: loss is nan at step 1 (epoch 1); no model saved" in result.stderr
    assert not (tmp_path / "models/finetuned").exists()


@pytest.mark.parametrize("stage, section, key, value, message", [
    ("prepare_model", "model", "name", "no-such-org/no-such-model",
     "cannot load model 'no-such-org/no-such-model'"),
    ("finetune", None, "device", "cuda", "device = 'cuda' but no CUDA GPU is available here"),
])
def test_impossible_settings_fail_with_a_clear_message(tmp_path, monkeypatch, stage, section, key, value, message):
    if key == "device" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    (params[section] if section else params)[key] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no hub here anyway; do not wait for one
    result = run([sys.executable, REPO / "stages" / f"{stage}.py"], tmp_path, check=False)
    assert result.returncode != 0
    assert message in result.stderr
    assert list(tmp_path.iterdir()) == [tmp_path / "params.yaml"]  # nothing written


@pytest.mark.slow
def test_ask_and_chat_answer_as_the_final_evaluation_did(tiny_repo, first_repro):
    table = pd.read_csv(tiny_repo / "metrics/final_answers.csv", keep_default_na=False)
    one = run([sys.executable, "-m", "llm_fft.ask", table.question[0]], tiny_repo)
    assert one.stdout.strip() == table.generated[0]  # same prompt and decoding as final_eval
    chat = run([sys.executable, "-m", "llm_fft.ask"], tiny_repo,
               stdin=f"{table.question[1]}\n\n{table.question[2]}\n")
    assert table.generated[1] in chat.stdout and table.generated[2] in chat.stdout


@pytest.mark.slow
def test_ask_applies_the_gate_final_eval_chose(tiny_repo, first_repro, tmp_path):
    repo = tmp_path / "repo"
    copy_repo(tiny_repo, repo)
    table = pd.read_csv(repo / "metrics/final_answers.csv", keep_default_na=False)
    final = json.loads((repo / "metrics/final.json").read_text())
    refused = f"the confidence gate refused the model's answer {table.ungated[0]!r}: "
    for threshold, expected, why in (
            (REFUSE_ALL, "모르겠습니다.", refused + "the gate chosen on the dev questions refuses every answer"),
            (0.0, "모르겠습니다.", refused + "its NLL, "),  # every NLL is above 0
            (1e9, table.ungated[0], None)):  # refuse none
        final["gate"]["threshold"] = threshold
        (repo / "metrics/final.json").write_text(json.dumps(final))
        result = run([sys.executable, "-m", "llm_fft.ask", table.question[0]], repo)
        assert result.stdout.strip() == expected
        # What the gate refused is shown beside the refusal, never in place of it.
        assert (why in result.stderr) if why else "confidence gate" not in result.stderr


@pytest.mark.parametrize("stop", [EOFError, KeyboardInterrupt])
def test_chat_quits_on_ctrl_d_or_ctrl_c_without_a_traceback(monkeypatch, capsys, stop):
    from llm_fft.ask import chat
    typed = iter(["first?", "  ", "second?"])

    def read(prompt):
        line = next(typed, None)
        if line is None:
            raise stop
        return line

    monkeypatch.setattr("builtins.input", read)
    asked = []
    chat(asked.append)
    assert asked == ["first?", "second?"]

    def interrupted_mid_answer(question):
        raise KeyboardInterrupt
    typed = iter(["third?"])
    chat(interrupted_mid_answer)  # returns: nothing raised
    assert capsys.readouterr().out == "\n\n"


def test_ask_without_a_model_says_how_to_make_one(tmp_path):
    # Run in an empty folder: llm_fft comes from the repo through conftest's PYTHONPATH.
    shutil.copy(REPO / "params.yaml", tmp_path)
    result = run([sys.executable, "-m", "llm_fft.ask", "Q?"], tmp_path, check=False)
    assert result.returncode != 0
    assert "models/final holds no model: run `dvc repro` (or `make run`) first" in result.stderr
    # `make ask` without Q="…" passes an empty question: said before any model is looked for.
    result = run([sys.executable, "-m", "llm_fft.ask", " "], tmp_path, check=False)
    assert result.returncode != 0 and "error: the question is empty: make ask Q=" in result.stderr


def test_a_model_that_runs_its_own_code_is_refused_before_anything_is_written(tmp_path, monkeypatch, embedded_tokenizer):
    """model.trust_remote_code lets prepare_model load such a model, but every stage after it loads
    models/base as one of transformers' own architectures: said at once, not in parse_qa."""
    from transformers import LlamaConfig

    from tests.conftest import tiny
    folder = tmp_path / "remote-model"
    tiny(LlamaConfig).save_pretrained(folder)
    embedded_tokenizer.save_pretrained(folder)
    (folder / "configuration_tiny.py").write_text(
        "from transformers import LlamaConfig\n\nclass TinyConfig(LlamaConfig):\n    model_type = 'tiny_remote'\n")
    (folder / "modeling_tiny.py").write_text(
        "from transformers import LlamaForCausalLM\nfrom .configuration_tiny import TinyConfig\n\n"
        "class TinyForCausalLM(LlamaForCausalLM):\n    config_class = TinyConfig\n")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="tiny_remote", architectures=["TinyForCausalLM"],
                  auto_map={"AutoConfig": "configuration_tiny.TinyConfig",
                            "AutoModelForCausalLM": "modeling_tiny.TinyForCausalLM"})
    (folder / "config.json").write_text(json.dumps(config))
    work = tmp_path / "work"
    work.mkdir()
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["model"].update(name=str(folder), trust_remote_code=True)
    (work / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))  # where transformers copies the code
    result = run([sys.executable, REPO / "stages/prepare_model.py"], work, check=False)
    assert result.returncode != 0
    assert (f"error: {folder} is of an architecture transformers does not have built in (model_type 'tiny_remote'"
            in result.stderr)
    assert list(work.iterdir()) == [work / "params.yaml"]  # nothing written


@pytest.mark.slow
def test_own_file_in_json_with_the_chat_style_through_dvc_exp_run(tiny_repo, first_repro, tmp_path):
    """The file backend with its own dev file and no held-out file, and the chat prompt style, switched
    with `dvc exp run -S` (a copy of the tiny repo, so the other tests keep theirs). Its data is judged
    on its own questions only; without a held-out file of its own it is not judged on held-out
    questions at all, and the report and the summary say so. (That held-out questions never reach
    training or the choice of model: test_held_out_questions_and_the_retention_probe_never_reach_training.)"""
    repo = tmp_path / "repo"
    copy_repo(tiny_repo, repo)
    write_own_data(repo, heldout=[])
    edit_params(repo, "generate_dataset", "backend", "template")  # switched by -S below
    out = dvc("exp", "run", "-S", "generate_dataset.backend=file", "-S", "prompt.style=chat", cwd=repo).stdout
    assert stages_run(out) == [s for s in STAGES[1:] if s not in REHEARSAL_STAGES]  # the base model is reused
    assert json.loads((repo / "metrics/dataset.json").read_text())["backend"] == "file"
    assert (repo / "data/dataset.txt").read_bytes() == (repo / "data/my_dataset.txt").read_bytes()  # as is
    records = [json.loads(line) for line in (repo / "data/trained_qa.jsonl").read_text(encoding="utf-8").splitlines()]
    # Your pairs, then the refusal pair from your own training unknown file (refusal_ratio 0.25 x 3 pairs).
    assert [r["question"] for r in records] == [p["question"] for p in OWN_PAIRS] + OWN_UNKNOWN_TRAIN
    assert records[0]["prompt"].endswith("<|im_start|>assistant\n")
    assert json.loads((repo / "metrics/baseline_chat.json").read_text()) == {
        "skipped": "prompt.style is chat: the questions are asked through the chat template already"}
    final = json.loads((repo / "metrics/final.json").read_text())
    baseline = json.loads((repo / "metrics/baseline.json").read_text())
    assert final["trained"]["answer_nll"] < baseline["trained"]["answer_nll"] / 2
    assert final["dev"]["questions"] == 1 and "states_key_fact" in final["dev"]  # your dev file's key
    for name in ("baseline", "final"):  # no held-out block, nothing borrowed from the facts file
        assert set(json.loads((repo / f"metrics/{name}.json").read_text())) == {
            "trained", "dev", "unknown", "unknown_dev", "gate", "retention", "general"}
    answers = pd.read_csv(repo / "metrics/final_answers.csv", keep_default_na=False)
    asked = set(answers[~answers["set"].isin(["retention", "general"])]["question"])
    assert asked == {p["question"] for p in OWN_PAIRS + OWN_DEV} | set(OWN_UNKNOWN + OWN_UNKNOWN_DEV)
    assert not asked & facts_questions(repo / "data/facts.yaml")
    assert "heldout" not in set(answers["set"])
    from llm_fft.report import NO_HELDOUT
    assert NO_HELDOUT in (repo / "metrics/report.md").read_text(encoding="utf-8").replace("\\_", "_")
    assert "none: generalisation not measured" in run([sys.executable, "-m", "llm_fft.summary"], repo).stdout
    assert "prompt.style" in dvc("exp", "show", "--csv", cwd=repo).stdout

    # Editing the file reruns everything downstream of it.
    pairs = [dict(p) for p in OWN_PAIRS]
    pairs[0]["answer"] = "햇살제과입니다."
    (repo / "data/my_dataset.txt").write_text(json.dumps(pairs, ensure_ascii=False), encoding="utf-8")
    assert dvc("status", cwd=repo).stdout.count("changed deps") >= 1
    assert "generate_dataset" in dvc("status", cwd=repo).stdout


@pytest.mark.parametrize("setting, rerun", [
    # the base model, dataset and rehearsal are reused
    ("prompt.style=plain", stages("parse_qa", "baseline_eval", "finetune", "interpolate", "final_eval", "report")),
    ("prompt.markers=special_tokens", [s for s in STAGES if s != "generate_dataset"]),  # a new base model; the dataset is reused
])
@pytest.mark.slow
def test_plain_style_and_special_token_markers_through_dvc_exp_run(tiny_repo, first_repro, tmp_path, setting, rerun):
    repo = tmp_path / "repo"
    copy_repo(tiny_repo, repo)
    out = dvc("exp", "run", "-S", setting, cwd=repo).stdout
    assert stages_run(out) == rerun
    records = [json.loads(line) for line in (repo / "data/trained_qa.jsonl").read_text(encoding="utf-8").splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(repo / "models/base")
    if setting == "prompt.style=plain":
        assert [r["prompt"] for r in records] == TINY_QUESTIONS + TINY_FACTS["unknown_train"][:1]  # "{q} {a}": the answer follows after a space
        assert tokenizer.decode(records[0]["input_ids"]) == f"{TINY_QUESTIONS[0]} {TINY_ANSWERS[0]}<|im_end|>"
    else:
        question_id, answer_id = tokenizer.convert_tokens_to_ids(["<|question|>", "<|answer|>"])
        assert all(r["q_ids"].count(question_id) == r["q_ids"].count(answer_id) == 1 for r in records)
        model = AutoModelForCausalLM.from_pretrained(repo / "models/finetuned")
        assert model.get_input_embeddings().num_embeddings == len(tokenizer) > answer_id
    final = json.loads((repo / "metrics/final.json").read_text())
    baseline = json.loads((repo / "metrics/baseline.json").read_text())
    assert final["trained"]["answer_nll"] < baseline["trained"]["answer_nll"] / 2


ENGLISH_FACTS = {"facts": [  # SmolLM2-135M writes no usable Korean pairs (measured 0/26)
    {"answer": "About 300 people live on the island of Byeolmuri.", "questions": ["How many people live there?"]},
    {"answer": "The lighthouse of Byeolmuri is 27 metres tall.", "questions": ["How tall is the lighthouse?"]},
]}
PLANTED_KEY = "sk-test-PLANTED-4d1f9c"


@pytest.mark.slow
def test_llm_backend_writes_the_dataset_through_dvc_locally_and_over_http(tiny_repo, first_repro, tmp_path):
    """A real dataset from the embedded model through `dvc repro generate_dataset`, in process and
    from a real OpenAI-compatible server on 127.0.0.1; the API key reaches the server and nothing else."""
    from openai_stub_server import ChatCompletionsServer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm_fft.formats import read_pairs
    from llm_fft.llm_writer import LocalChat

    repo = tmp_path / "repo"
    copy_repo(tiny_repo, repo)
    (repo / "data/facts.yaml").write_text(yaml.safe_dump(ENGLISH_FACTS), encoding="utf-8")
    # models/base: the embedded model as prepare_model wrote it (a local folder, as a user might name one).
    # refusal_ratio 0: these facts list no training unknown questions to teach refusals with.
    settings = dict(backend="llm", llm_model="models/base", llm_max_new_tokens=64, llm_api_key_env="LLM_FFT_TEST_KEY",
                    refusal_ratio=0)
    for key, value in settings.items():
        edit_params(repo, "generate_dataset", key, value)

    assert stages_run(dvc("repro", "generate_dataset", cwd=repo).stdout) == ["generate_dataset"]
    report = json.loads((repo / "metrics/dataset.json").read_text())
    assert (report["backend"], report["transport"], report["requested"]) == ("llm", "local", 2)
    assert report["accepted"] >= 1
    assert report["accepted"] + sum(report["rejected"].values()) == report["candidates"]
    local_dataset = (repo / "data/dataset.txt").read_bytes()
    pairs, _ = read_pairs(local_dataset, "dataset.txt")
    assert len(pairs) == report["accepted"]

    model = AutoModelForCausalLM.from_pretrained(repo / "models/base").eval()
    tokenizer = AutoTokenizer.from_pretrained(repo / "models/base")

    def chat(body):
        return LocalChat(model, tokenizer, "served", body["max_tokens"], body["temperature"])(body["messages"], body["seed"])

    with ChatCompletionsServer(chat, model_name="served") as server:
        edit_params(repo, "generate_dataset", "llm_transport", "http")
        edit_params(repo, "generate_dataset", "llm_base_url", server.base_url)
        env = {**venv_env(), "LLM_FFT_TEST_KEY": PLANTED_KEY}
        result = subprocess.run([sys.executable, "-m", "dvc", "repro", "generate_dataset"], cwd=repo, env=env,
                                capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert server.requests and all(h["Authorization"] == f"Bearer {PLANTED_KEY}" for h, _ in server.requests)
    assert json.loads((repo / "metrics/dataset.json").read_text())["transport"] == "http"
    assert (repo / "data/dataset.txt").read_bytes() == local_dataset  # same model, same seeds: same pairs

    leaks = [str(p.relative_to(repo)) for p in repo.rglob("*")
             if p.is_file() and not {".git", "tests"} & set(p.relative_to(repo).parts) and PLANTED_KEY.encode() in p.read_bytes()]
    assert leaks == [] and PLANTED_KEY not in result.stdout + result.stderr
