"""make gpu-check's code path on the CPU (--smoke), which is also the kanana path's CPU test: every
stage of dvc.yaml on a random tiny Llama loaded from a local folder (model.name = a path), with a
Llama-3-style tokenizer built locally: byte-level BPE, <|begin_of_text|> added by the post-processor,
<|end_of_text|> as EOS, no pad token (kanana's kind; SmolLM2's and Gemma's are tested elsewhere)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from llm_fft.batching import IGNORE_INDEX, collate
from llm_fft.files import read_jsonl

pytestmark = pytest.mark.slow  # every stage of the pipeline, through DVC (about two minutes)

REPO = Path(__file__).resolve().parents[1]


def run(command, cwd):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    """(the scratch repo gpu-check ran in, its output, its JSON)."""
    folder = tmp_path_factory.mktemp("gpu-check")
    result = run([sys.executable, "-m", "llm_fft.gpu_check", "--smoke", "--work", str(folder / "work"),
                  "--out", str(folder / "gpu_check.json")], REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    return folder / "work", result.stdout, json.loads((folder / "gpu_check.json").read_text(encoding="utf-8"))


def test_every_stage_runs_timed_with_its_peak_memory(checked):
    _, out, doc = checked
    stages = list(yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"])
    assert [row["stage"] for row in doc["stages"]] == stages
    assert all(row["seconds"] > 0 and row["peak_gpu_gib"] is None for row in doc["stages"])  # no GPU here
    assert "gpu-check passed" in out and all(f"\n{stage} " in "\n" + out for stage in stages)


def test_the_llama3_style_tokenizer_gives_one_bos_and_labels_ending_in_eos(checked):
    from llm_fft.model import load_tokenizer  # with the project's LlamaConfig check: 3 heads of head_dim 16
    work = checked[0]
    tokenizer = load_tokenizer(work / "models/base")
    bos, eos = tokenizer.convert_tokens_to_ids(["<|begin_of_text|>", "<|end_of_text|>"])
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (bos, eos)
    assert tokenizer.pad_token_id == eos  # it had none: pad = EOS, so padding is masked by position
    records = read_jsonl(work / "data/trained_qa.jsonl")
    assert records and any(r.get("refusal") for r in records)
    for r in records:
        assert r["input_ids"].count(bos) == 1 and r["input_ids"][0] == bos  # the post-processor's, once
        assert r["input_ids"][:len(r["q_ids"])] == r["q_ids"]
        assert r["labels"][-1] == eos and r["input_ids"][-1] == eos
        assert r["labels"][:len(r["q_ids"])] == [IGNORE_INDEX] * len(r["q_ids"])
    short, long = sorted(records[:2], key=lambda r: len(r["input_ids"]))
    batch = collate([short, long], tokenizer.pad_token_id)
    n = len(short["input_ids"])
    assert batch["labels"][0, n - 1] == eos  # the real EOS stays supervised
    assert (batch["labels"][0, n:] == IGNORE_INDEX).all() and (batch["attention_mask"][0, n:] == 0).all()


def test_both_evaluations_ran_and_ask_answers_as_final_eval_did(checked):
    work = checked[0]
    for name in ("baseline", "final"):
        metrics = json.loads((work / f"metrics/{name}.json").read_text(encoding="utf-8"))
        assert metrics["trained"]["questions"] == sum(not r.get("refusal")
                                                      for r in read_jsonl(work / "data/trained_qa.jsonl"))
        assert metrics["heldout"]["questions"] > 0 and metrics["unknown"]["questions"] > 0
    answers = pd.read_csv(work / "metrics/final_answers.csv", keep_default_na=False)
    row = answers[answers["set"] == "heldout"].iloc[0]
    result = run([sys.executable, "-m", "llm_fft.ask", row["question"]], work)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(row["generated"]).strip()
