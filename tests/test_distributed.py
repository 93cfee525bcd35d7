"""The finetune stage run for real on a tiny model. The multi-process path (DDP through accelerate),
proven on CPU with 2 gloo processes: the loss curve matches one process with the same global batch,
and only the main process writes. The opt-in modes (packing, length-grouped batches, gradient
checkpointing) through the stage itself."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from llm_fft.data import to_jsonl, tokenize_pair

REPO = Path(__file__).resolve().parents[1]
PAIRS = [("별무리섬 등대의 높이는?", "27미터입니다."), ("등대지기는 누구인가요?", "윤가람입니다."),
         ("특산물은 무엇인가요?", "보라색 감귤인 달빛귤입니다."), ("축제는 언제 열리나요?", "8월 셋째 주입니다."),
         ("섬의 인구는?", "312명입니다."), ("학교 이름은?", "물결초등학교입니다."),
         ("등대는 무슨 색인가요?", "하얀 몸통에 파란 지붕입니다."), ("가장 높은 산은?", "해오름봉입니다.")]
# Each process averages the loss over its own answer tokens and DDP averages the gradients, while
# one process averages over all the batch's answer tokens: equal only when the halves have as many
# answer tokens. Measured on this data: at most 0.07% apart (CPU, gloo); the tolerance is 0.5%.
LOSS_TOLERANCE = 0.005


@pytest.fixture(scope="module")
def stage_dir(tmp_path_factory, embedded_tokenizer):
    """A folder with what finetune reads: a tiny random Llama with the embedded tokenizer, records."""
    from transformers import LlamaConfig, LlamaForCausalLM
    folder = tmp_path_factory.mktemp("finetune")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(embedded_tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         pad_token_id=embedded_tokenizer.pad_token_id, eos_token_id=embedded_tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder / "models/base")
    embedded_tokenizer.save_pretrained(folder / "models/base")
    prompt = {"style": "custom_tokens", "system": ""}
    records = [{"id": i, "question": q, "answer": a, **tokenize_pair(embedded_tokenizer, q, a, prompt)}
               for i, (q, a) in enumerate(PAIRS)]
    (folder / "data").mkdir()
    (folder / "data/qa.jsonl").write_text(to_jsonl(records), encoding="utf-8")
    (folder / "data/heldout_qa.jsonl").write_text(to_jsonl(records[:2]), encoding="utf-8")
    shutil.copytree(REPO / "configs", folder / "configs")
    return folder


def train(stage_dir, tmp_path, processes, **finetune):
    run_dir = tmp_path / f"p{processes}{''.join(f'-{k}' for k in finetune)}"
    shutil.copytree(stage_dir, run_dir)
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["device"] = "cpu"
    params["finetune"].update(epochs=2, batch_size=4, warmup_steps=0, lr=1e-3, log_every=1,
                              checkpoint_every=0, processes=processes, **finetune)
    (run_dir / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "x"]):  # DVCLive wants a git repo
        subprocess.run(git + args, cwd=run_dir, check=True)
    result = subprocess.run([sys.executable, REPO / "stages/finetune.py"], cwd=run_dir, capture_output=True,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1",
                                            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    assert result.returncode == 0, result.stdout + result.stderr
    return run_dir, result.stdout + result.stderr


def test_two_processes_train_like_one_with_the_same_global_batch(stage_dir, tmp_path):
    one_dir, one_log = train(stage_dir, tmp_path, 1)
    two_dir, two_log = train(stage_dir, tmp_path, 2)
    assert "x 2 process(es)" in two_log and "x 1 process(es)" in one_log
    curve = "metrics/finetune/plots/metrics/train/loss.tsv"
    one, two = (pd.read_csv(d / curve, sep="\t") for d in (one_dir, two_dir))
    assert list(one["step"]) == list(two["step"]) == list(range(4))  # 2 epochs x 8 examples / 4
    assert two["loss"].to_numpy() == pytest.approx(one["loss"].to_numpy(), rel=LOSS_TOLERANCE)
    assert one["loss"].iloc[-1] < one["loss"].iloc[0]  # it trained

    # Only the main process writes and logs: one model, one curve, each log line once.
    assert (two_dir / "models/finetuned/config.json").is_file()
    assert not list(two_dir.glob("models/finetuned.tmp*"))
    assert two_log.count("wrote models/finetuned") == 1
    assert two_log.count("step 00004/00004") == 1
    assert two_log.count("held-out answer loss") == 2  # once per epoch
    heldout = pd.read_csv(two_dir / "metrics/finetune/plots/metrics/heldout/answer_nll.tsv", sep="\t")
    assert list(heldout["step"]) == [1, 3]


def loss_curve(run_dir):
    return pd.read_csv(run_dir / "metrics/finetune/plots/metrics/train/loss.tsv", sep="\t")["loss"].to_numpy()


def test_packed_batches_train_like_padded_ones(stage_dir, tmp_path):
    padded_dir, _ = train(stage_dir, tmp_path, 1)
    packed_dir, _ = train(stage_dir, tmp_path, 1, packing=True)
    # Same examples in each step, no padding, attention kept within each example: the same losses,
    # up to float rounding over four steps.
    assert loss_curve(packed_dir) == pytest.approx(loss_curve(padded_dir), rel=1e-4)


def test_length_grouped_batches_and_gradient_checkpointing_train(stage_dir, tmp_path):
    run_dir, log = train(stage_dir, tmp_path, 1, group_by_length=True, gradient_checkpointing=True)
    losses = loss_curve(run_dir)
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert (run_dir / "models/finetuned/config.json").is_file()
