"""End to end: the real stages through `dvc repro` in a temporary copy of the repo, on the embedded
model with a tiny dataset and few steps; then what DVC reruns after each kind of edit."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
STAGES = ["prepare_model", "generate_dataset", "parse_qa", "baseline_eval", "finetune", "final_eval"]
TINY_FACTS = {"subject": "test", "pairs": [
    {"question": "별무리섬 등대의 높이는?", "answer": "27미터입니다."},
    {"question": "등대지기는 누구인가요?", "answer": "윤가람입니다."},
    {"question": "특산물은 무엇인가요?", "answer": "달빛귤입니다."},
    {"question": "축제는 언제 열리나요?", "answer": "8월 셋째 주입니다."},
]}


def run(args, cwd, check=True):
    # Stage commands call `python`: make it this interpreter (the venv's).
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(map(str, args))} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def dvc(*args, cwd, check=True):
    return run([sys.executable, "-m", "dvc", *args], cwd, check)


def stages_run(output):
    return [m for m in re.findall(r"Running stage '(\w+)'", output)]


def edit_params(repo, section, key, value):
    params = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))
    params[section][key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")


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
    params = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))
    params["finetune"].update(epochs=2, batch_size=2, warmup_steps=0, log_every=1)
    params["evaluate"].update(extra_new_tokens=2)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    for args in (["init", "-q"], ["add", "-A"],
                 ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"]):
        run(["git", *args], repo)
    return repo


@pytest.fixture(scope="module")
def first_repro(tiny_repo):
    return dvc("repro", cwd=tiny_repo).stdout


def test_repro_runs_every_stage_and_writes_every_output(tiny_repo, first_repro):
    assert stages_run(first_repro) == STAGES
    records = [json.loads(line) for line in (tiny_repo / "data/qa.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["question"] for r in records] == [p["question"] for p in TINY_FACTS["pairs"]]
    assert "supervised:" in (tiny_repo / "data/preview.md").read_text(encoding="utf-8")

    baseline = json.loads((tiny_repo / "metrics/baseline.json").read_text())
    final = json.loads((tiny_repo / "metrics/final.json").read_text())
    assert baseline.keys() == final.keys() >= {"exact_match", "contains_answer", "answer_nll"}
    assert baseline["questions"] == final["questions"] == 4
    # Two epochs on four answers must lower the answer loss a lot; generation may still be off.
    assert final["answer_nll"] < baseline["answer_nll"] / 2

    for name in ("baseline_answers.csv", "final_answers.csv"):
        table = pd.read_csv(tiny_repo / "metrics" / name, keep_default_na=False)
        assert list(table["expected"]) == [p["answer"] for p in TINY_FACTS["pairs"]]
        assert {"question", "generated", "exact_match"} <= set(table.columns)
    comparison = (tiny_repo / "metrics/comparison.md").read_text(encoding="utf-8")
    assert all(p["question"] in comparison for p in TINY_FACTS["pairs"])

    loss = pd.read_csv(tiny_repo / "metrics/finetune/plots/metrics/train/loss.tsv", sep="\t")
    assert list(loss["step"]) == [0, 1, 2, 3]  # 2 epochs x 2 batches of 2
    assert loss["loss"].notna().all()


def test_every_weight_was_trained_and_the_model_loads(tiny_repo, first_repro):
    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained(tiny_repo / "models/base").state_dict()
    tuned = AutoModelForCausalLM.from_pretrained(tiny_repo / "models/finetuned").state_dict()
    assert base.keys() == tuned.keys()
    unchanged = [name for name in base if torch.equal(base[name], tuned[name])]
    assert unchanged == []


def test_second_repro_does_nothing(tiny_repo, first_repro):
    out = dvc("repro", cwd=tiny_repo).stdout
    assert stages_run(out) == []
    assert "up to date" in out


@pytest.mark.parametrize("edit, expected", [
    (("finetune", "lr", 1e-4), ["finetune", "final_eval"]),
    (("evaluate", "batch_size", 3), ["baseline_eval", "final_eval"]),  # no retraining
])
def test_a_param_edit_reruns_only_the_stages_that_read_it(tiny_repo, first_repro, edit, expected):
    params = tiny_repo / "params.yaml"
    original = params.read_text(encoding="utf-8")
    edit_params(tiny_repo, *edit)
    assert stages_run(dvc("repro", cwd=tiny_repo).stdout) == expected
    restore(tiny_repo, params, original)


def test_editing_the_facts_reruns_everything_from_generate_dataset(tiny_repo, first_repro):
    facts = tiny_repo / "data/facts.yaml"
    original = facts.read_text(encoding="utf-8")
    facts.write_text(original.replace("27미터", "28미터"), encoding="utf-8")
    assert stages_run(dvc("repro", cwd=tiny_repo).stdout) == STAGES[1:]
    restore(tiny_repo, facts, original)


def restore(repo, path, text):
    """Undo an edit. DVC's run cache brings cached outputs back without retraining; stages whose
    outputs are committed metrics (cache: false) rerun."""
    path.write_text(text, encoding="utf-8")
    assert "finetune" not in stages_run(dvc("repro", cwd=repo).stdout)
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


def test_bad_params_are_all_reported_before_any_work(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["finetune"]["lr"] = -1.0
    params["finetune"]["epoch"] = params["finetune"].pop("epochs")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    result = run([sys.executable, REPO / "stages/finetune.py"], tmp_path, check=False)
    assert result.returncode != 0
    assert "finetune.lr = -1.0 is out of range" in result.stderr
    assert "finetune.epoch is not a known key (did you mean 'epochs'?)" in result.stderr
    assert "finetune.epochs is missing" in result.stderr
