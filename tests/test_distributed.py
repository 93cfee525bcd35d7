"""The finetune stage run for real on a tiny model. The multi-process paths through accelerate,
proven on CPU with 2 gloo processes: DDP and FSDP each train like one process with the same global
batch, only the main process writes, and a run killed midway resumes from its checkpoint as if
never killed. The opt-in modes (packing, length-grouped batches, gradient checkpointing) through the
stage itself."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch
import yaml
from safetensors.torch import load_file

from llm_fft.distill import save_teacher, teacher_top_k
from llm_fft.files import to_jsonl
from llm_fft.prompts import tokenize_pair, tokenize_text

pytestmark = pytest.mark.slow  # every test here trains through the finetune stage, most in 2 processes

REPO = Path(__file__).resolve().parents[1]
# 9 examples in batches of 4: each epoch ends with a batch of one, which leaves the second of two
# processes without an example (it must still take part in every step).
PAIRS = [("별무리섬 등대의 높이는?", "27미터입니다."), ("등대지기는 누구인가요?", "윤가람입니다."),
         ("특산물은 무엇인가요?", "보라색 감귤인 달빛귤입니다."), ("축제는 언제 열리나요?", "8월 셋째 주입니다."),
         ("섬의 인구는?", "312명입니다."), ("학교 이름은?", "물결초등학교입니다."),
         ("등대는 무슨 색인가요?", "하얀 몸통에 파란 지붕입니다."), ("가장 높은 산은?", "해오름봉입니다."),
         ("우체국은 어디에 있나요?", "선착장 바로 옆에 있습니다.")]
STEPS = 6  # 2 epochs x 3 batches
REHEARSAL_TEXTS = ["The Nile flows north through eleven countries.", "A prime number has exactly two divisors.",
                   "Bread rises because yeast makes gas.", "The piano was invented in Italy."]
# Each process divides its summed answer-token loss by the whole batch's count, so the processes'
# mean gradient is the one-process gradient: the same numbers but for the order of float sums.
# Measured on this data (CPU, gloo), DDP and FSDP alike: losses at most 9e-8 apart (relative),
# weights after 6 AdamW steps at most 5.3e-7 (absolute).
LOSS_TOLERANCE = 1e-5
WEIGHT_TOLERANCE = 1e-5


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
    (folder / "data/trained_qa.jsonl").write_text(to_jsonl(records), encoding="utf-8")
    (folder / "data/dev_qa.jsonl").write_text(to_jsonl(records[:2]), encoding="utf-8")
    (folder / "data/statements_qa.jsonl").write_text("", encoding="utf-8")
    # The base model's own text for rehearsal_loss kl (the runs that set rehearsal_ratio > 0)
    rehearsal = [tokenize_text(embedded_tokenizer, text) for text in REHEARSAL_TEXTS]
    (folder / "data/rehearsal.jsonl").write_text(to_jsonl(rehearsal), encoding="utf-8")
    # and the base model's distributions over it, as stage teacher_distributions stores them
    base = LlamaForCausalLM.from_pretrained(folder / "models/base").eval()
    save_teacher(folder / "data/rehearsal_teacher.safetensors",
                 teacher_top_k(base, rehearsal, 16, 2, embedded_tokenizer.pad_token_id, "cpu"), rehearsal)
    shutil.copytree(REPO / "configs", folder / "configs")
    return folder


def prepare_run(stage_dir, run_dir, processes, model_dtype="float32", **finetune):
    """A copy of stage_dir with these finetune params (and model.dtype, the saved model's); returns the
    command and environment that train."""
    shutil.copytree(stage_dir, run_dir)
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["device"] = "cpu"
    params["model"]["dtype"] = model_dtype
    params["finetune"].update({"epochs": 2, "batch_size": 4, "warmup_steps": 0, "lr": 1e-3, "log_every": 1,
                               "checkpoint_minutes": 0, "checkpoint_every": 0, "processes": processes, "rehearsal_ratio": 0,
                               # fp32: the tolerances below were measured in it (auto is bf16 on CPUs that have it)
                               "precision": "fp32", **finetune})
    (run_dir / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "x"]):  # DVCLive wants a git repo
        subprocess.run(git + args, cwd=run_dir, check=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return [sys.executable, REPO / "stages/finetune.py"], env


def train(stage_dir, run_dir, processes, **finetune):
    command, env = prepare_run(stage_dir, run_dir, processes, **finetune)
    # A collective one process skips hangs the others: fail then, never hang CI
    result = subprocess.run(command, cwd=run_dir, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def one_process(stage_dir, tmp_path_factory):
    """The reference run: one process, global batch 4. Returns (run folder, log)."""
    run_dir = tmp_path_factory.mktemp("one") / "run"
    return run_dir, train(stage_dir, run_dir, 1)


def loss_curve(run_dir):
    return pd.read_csv(run_dir / "metrics/finetune/plots/metrics/train/loss.tsv", sep="\t")["loss"].to_numpy()


def weights(run_dir):
    return load_file(run_dir / "models/finetuned/model.safetensors")


def assert_trained_like(run_dir, reference_dir):
    assert loss_curve(run_dir) == pytest.approx(loss_curve(reference_dir), rel=LOSS_TOLERANCE)
    ours, reference = weights(run_dir), weights(reference_dir)
    assert ours.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(ours[name], reference[name], rtol=0, atol=WEIGHT_TOLERANCE, msg=name)


def assert_main_process_alone_wrote(run_dir, log):
    """One model, one curve, each log line once."""
    assert (run_dir / "models/finetuned/config.json").is_file()
    assert not list(run_dir.glob("models/finetuned.tmp*"))
    assert log.count("wrote models/finetuned") == 1
    assert log.count(f"step {STEPS:05d}/{STEPS:05d}") == 1
    assert log.count("done | dev answer loss") == 2  # once per epoch
    dev = pd.read_csv(run_dir / "metrics/finetune/plots/metrics/dev/answer_nll.tsv", sep="\t")
    assert list(dev["step"]) == [2, 5]


def test_two_processes_train_like_one_with_the_same_global_batch(stage_dir, one_process, tmp_path):
    one_dir, one_log = one_process
    two_log = train(stage_dir, tmp_path / "ddp", 2)
    assert "x 2 process(es) (fp32)" in two_log and "x 1 process(es) (fp32)" in one_log
    assert len(loss_curve(one_dir)) == STEPS and loss_curve(one_dir)[-1] < loss_curve(one_dir)[0]  # it trained
    assert_trained_like(tmp_path / "ddp", one_dir)
    assert_main_process_alone_wrote(tmp_path / "ddp", two_log)


def test_two_processes_with_the_kl_rehearsal_train_like_one(stage_dir, tmp_path):
    # The default rehearsal: each process's rows, task and distilled rehearsal rows alike, in one forward
    # pass; the processes' shares differ in which rows carry stored teacher distributions.
    kl = {"rehearsal_ratio": 0.5, "rehearsal_loss": "kl"}
    one_log = train(stage_dir, tmp_path / "one", 1, **kl)
    two_log = train(stage_dir, tmp_path / "two", 2, **kl)
    assert "rehearsal texts (kl)" in one_log and "x 2 process(es) (fp32)" in two_log
    assert_trained_like(tmp_path / "two", tmp_path / "one")


def test_fsdp_over_two_processes_trains_like_one_process(stage_dir, one_process, tmp_path):
    log = train(stage_dir, tmp_path / "fsdp", 2, fsdp=True)
    assert "x 2 process(es) (FSDP) (fp32)" in log
    assert_trained_like(tmp_path / "fsdp", one_process[0])  # the saved weights were gathered whole
    assert_main_process_alone_wrote(tmp_path / "fsdp", log)
    config = (tmp_path / "fsdp/models/finetuned/config.json").read_text(encoding="utf-8")
    assert '"LlamaForCausalLM"' in config and '"dtype": "float32"' in config and "FSDP" not in config


@pytest.mark.parametrize("fsdp, every", [
    # DDP and FSDP with the default rehearsal, distilled from the stored teacher distributions. DDP
    # saves by time, as on the GPU box: the processes must agree on when to save; FSDP by steps.
    (False, {"checkpoint_minutes": 1e-6, "rehearsal_ratio": 0.5, "rehearsal_loss": "kl"}),
    (True, {"checkpoint_every": 2, "rehearsal_ratio": 0.5, "rehearsal_loss": "kl"}),
], ids=["ddp-kl-by-time", "fsdp-kl"])
def test_two_process_run_killed_midway_resumes_as_if_never_killed(stage_dir, tmp_path, fsdp, every):
    settings = {"fsdp": fsdp, "epochs": 4, **every}
    train(stage_dir, tmp_path / "whole", 2, **settings)
    run_dir = tmp_path / "killed"
    command, env = prepare_run(stage_dir, run_dir, 2, **settings)
    checkpoint = run_dir / "models/checkpoints/finetune/checkpoint.pt"
    run_ = subprocess.Popen(command, cwd=run_dir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and run_.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    # The stage, accelerate's launcher and both training processes (each in its own session), with
    # no chance to clean up.
    stage = psutil.Process(run_.pid)
    for process in [stage, *stage.children(recursive=True)]:
        process.kill()
    run_.wait()
    assert checkpoint.exists(), "finetune finished or failed before its first checkpoint"
    assert not (run_dir / "models/finetuned").exists()

    result = subprocess.run(command, cwd=run_dir, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resuming from models/checkpoints/finetune/checkpoint.pt at step" in result.stdout
    assert not checkpoint.parent.exists()
    # Every process took back the whole weights and AdamW state (FSDP: its shard of them): the same run.
    assert list(loss_curve(run_dir)) == list(loss_curve(tmp_path / "whole"))
    resumed, whole = weights(run_dir), weights(tmp_path / "whole")
    assert all(torch.equal(resumed[name], whole[name]) for name in whole)


def test_fsdp_saves_bfloat16_weights_that_load_and_answer(stage_dir, one_process, tmp_path, embedded_tokenizer):
    """make train's dtype (model.dtype bfloat16) with FSDP: the gathered weights are saved in bf16, and
    the saved model loads and answers like the one-process run's."""
    from llm_fft.generation import answer_questions
    from llm_fft.model import load_pretrained
    from llm_fft.nll import answer_nll
    run_dir = tmp_path / "fsdp-bf16"
    log = train(stage_dir, run_dir, 2, model_dtype="bfloat16", fsdp=True)
    assert_main_process_alone_wrote(run_dir, log)
    assert '"dtype": "bfloat16"' in (run_dir / "models/finetuned/config.json").read_text(encoding="utf-8")
    saved, reference = weights(run_dir), weights(one_process[0])
    assert saved.keys() == reference.keys() and all(w.dtype == torch.bfloat16 for w in saved.values())
    for name in reference:  # the fp32 run's weights rounded to bf16, up to the FSDP/one-process spread
        torch.testing.assert_close(saved[name], reference[name].to(torch.bfloat16), rtol=2 ** -7, atol=WEIGHT_TOLERANCE,
                                   msg=name)
    records = [json.loads(line) for line in (run_dir / "data/trained_qa.jsonl").read_text(encoding="utf-8").splitlines()]
    nll = {}
    for name, folder in (("bf16", run_dir), ("fp32", one_process[0])):
        model, tokenizer = load_pretrained(folder / "models/finetuned", torch.float32, "cpu")
        answers = answer_questions(model.eval(), tokenizer, records, 4, 8, "cpu")
        assert len(answers) == len(records) and all(a["generated_tokens"] > 0 for a in answers)
        nll[name] = answer_nll(model, records, 4, tokenizer.pad_token_id, "cpu")[1]
    assert nll["bf16"] == pytest.approx(nll["fp32"], rel=1e-2)


def test_packed_batches_train_like_padded_ones(stage_dir, one_process, tmp_path):
    train(stage_dir, tmp_path / "packed", 1, packing=True)
    # Same examples in each step, no padding, attention kept within each example: the same losses,
    # up to float rounding over six steps.
    assert loss_curve(tmp_path / "packed") == pytest.approx(loss_curve(one_process[0]), rel=1e-4)


def test_length_grouped_batches_and_gradient_checkpointing_train(stage_dir, tmp_path):
    train(stage_dir, tmp_path / "grouped", 1, group_by_length=True, gradient_checkpointing=True)
    losses = loss_curve(tmp_path / "grouped")
    assert len(losses) == STEPS and losses[-1] < losses[0]
    assert (tmp_path / "grouped/models/finetuned/config.json").is_file()
