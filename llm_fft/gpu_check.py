"""`make gpu-check`: the whole pipeline on a random-init model of kanana-nano-2.1b-base's exact shape,
on a new GPU box, with no hub access, in minutes. The first thing to run there (docs/gpu.md).

    python -m llm_fft.gpu_check            # CUDA: kanana's shape, then make bench's CUDA cases (MFU)
    python -m llm_fft.gpu_check --smoke    # anywhere: a tiny Llama on the CPU, the same code path (CI)

It copies the repository's tracked files to a scratch folder, writes there a random-init
LlamaForCausalLM of kanana's shape (llm_fft.bench.KANANA_SHAPE) with a Llama-3-style tokenizer built
locally (byte-level BPE, <|begin_of_text|> added by the post-processor, <|end_of_text|> as EOS, no pad
token: kanana's kind), trims the data to a few facts and sets the `make train` profile's params with
model.name = that folder and one short epoch. Then every stage of dvc.yaml runs in order, through
`dvc repro -s` where DVC is installed, else `python -m stages.NAME`, each timed, with the peak GPU
memory it added (in use on the whole device, sampled every 0.1 s, over what was in use when it
started: several processes count). A failing stage stops it with that stage's output, and the
scratch folder is kept. The table goes to stdout and metrics/gpu_check.json.
"""

import argparse
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import yaml

from llm_fft.bench import KANANA_SHAPE, SMOKE_SHAPE
from llm_fft.files import write_atomically
from llm_fft.paths import BENCH, GPU_CHECK, RETENTION

REPO = Path(__file__).resolve().parents[1]
BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"
FACTS, UNKNOWN, RETENTION_ITEMS, REHEARSAL_PROMPTS = 6, 3, 3, 8  # how much of the data the check keeps
# --smoke: a tiny Llama whose hidden size does not split into its heads, as kanana's does not (1792 over
# 24 heads of 128): every stage must load it through llm_fft.model's relaxed config check.
SMOKE = {**SMOKE_SHAPE, "num_attention_heads": 3, "num_key_value_heads": 1, "head_dim": 16}
# The `make train` profile (Makefile KANANA) on one GPU, but one epoch and a small evaluation.
PROFILE = {"model.dtype": "bfloat16", "finetune.lr": 1e-5, "finetune.epochs": 1, "finetune.batch_size": 2,
           "finetune.warmup_steps": 0, "finetune.lr_schedule": "constant_with_warmup", "finetune.processes": 1,
           "evaluate.batch_size": 16, "rehearsal.samples_per_prompt": 1, "rehearsal.new_tokens": 16,
           "interpolate.weights": [1.0, 0.5]}


def llama3_style_tokenizer(texts, vocab_size=2000):
    """A Llama-3-style tokenizer trained on texts: byte-level BPE, BOS added by the post-processor,
    EOS <|end_of_text|>, no pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[BOS, EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                       special_tokens=[(BOS, tok.token_to_id(BOS))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS)


def data_files(work):
    """The facts file, the retention probe and the rehearsal openings of the copy (params.yaml names two)."""
    params = yaml.safe_load((work / "params.yaml").read_text(encoding="utf-8"))
    return work / params["generate_dataset"]["facts"], work / RETENTION, work / params["rehearsal"]["prompts"]


def corpus(work):
    """Every text of the facts and probe files, for the tokenizer to learn its merges from."""
    texts = []
    for path in data_files(work):
        def walk(node):
            if isinstance(node, str):
                texts.append(node)
            elif isinstance(node, dict):
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)
        walk(yaml.safe_load(path.read_text(encoding="utf-8")))
    return texts


def write_model(folder, shape, texts):
    """A random-init LlamaForCausalLM of this shape and its tokenizer, saved in bf16 (as on the hub)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    tokenizer = llama3_style_tokenizer(texts)
    config = LlamaConfig(**shape, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # 2.1B parameters fill slowly on a CPU
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    parameters = sum(p.numel() for p in model.parameters())
    del model  # the stages get the GPU: nothing of this process's stays cached on it
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return parameters


def trim_data(work):
    """Few facts, unknown questions, probe items and rehearsal openings: minutes, not an hour."""
    facts_file, retention_file, prompts_file = data_files(work)
    facts = yaml.safe_load(facts_file.read_text(encoding="utf-8"))
    facts["facts"] = facts["facts"][:FACTS]
    for name in ("unknown", "unknown_dev"):  # unknown_train stays whole: refusal_ratio draws from it
        facts[name] = facts.get(name, [])[:UNKNOWN]
    facts_file.write_text(yaml.safe_dump(facts, allow_unicode=True), encoding="utf-8")
    retention = yaml.safe_load(retention_file.read_text(encoding="utf-8"))
    retention = {k: v[:RETENTION_ITEMS] for k, v in retention.items()}
    retention_file.write_text(yaml.safe_dump(retention, allow_unicode=True), encoding="utf-8")
    prompts = yaml.safe_load(prompts_file.read_text(encoding="utf-8"))
    prompts["prompts"] = prompts["prompts"][:REHEARSAL_PROMPTS]
    prompts["facts"] = prompts.get("facts", [])[:REHEARSAL_PROMPTS]  # rehearsal.facts: a few keyed facts too
    prompts_file.write_text(yaml.safe_dump(prompts, allow_unicode=True), encoding="utf-8")


def set_params(work, overrides):
    params = yaml.safe_load((work / "params.yaml").read_text(encoding="utf-8"))
    for dotted, value in overrides.items():
        *sections, key = dotted.split(".")
        node = params
        for section in sections:
            node = node[section]
        assert key in node, f"params.yaml has no {dotted}"  # a renamed key must not pass unnoticed
        node[key] = value
    (work / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")


def copy_repo(work):
    """The repository's tracked and new files (not .venv, models or DVC's cache), in a fresh git repo."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in files:
        if (REPO / name).is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, work / name)
    git = ["git", "-c", "user.name=gpu-check", "-c", "user.email=gpu-check@localhost"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "gpu-check"]):
        subprocess.run(git + args, cwd=work, check=True, capture_output=True)


def gpu_memory_in_use():
    """GiB in use on the GPU, by every process."""
    free, total = torch.cuda.mem_get_info()
    return (total - free) / 2**30


class PeakGpuMemory:
    """The most GPU memory the block added, in GiB: the peak in use on the device while it ran, over
    what was in use when it started (None when not on CUDA)."""

    def __init__(self, on_cuda):
        self.on_cuda = on_cuda

    def __enter__(self):
        self.peak, self.running = None, self.on_cuda
        if self.running:
            self.before = gpu_memory_in_use()
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak or 0.0, gpu_memory_in_use() - self.before)
            time.sleep(0.1)

    def __exit__(self, *exc):
        if self.running:
            self.running = False
            self.thread.join()


def run_stages(work, on_cuda):
    """Every stage of dvc.yaml in order, timed: [{stage, seconds, peak_gpu_gib}]. Exits on a failure."""
    stages = list(yaml.safe_load((work / "dvc.yaml").read_text(encoding="utf-8"))["stages"])
    # DVC runs each stage's `python`: this interpreter's, as make's venv would
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    dvc = shutil.which("dvc", path=env["PATH"])
    rows = []
    for stage in stages:
        command = [dvc, "repro", "-s", stage] if dvc else [sys.executable, "-m", f"stages.{stage}"]
        started = time.perf_counter()
        with PeakGpuMemory(on_cuda) as memory:
            result = subprocess.run(command, cwd=work, capture_output=True, text=True, env=env)
        rows.append({"stage": stage, "seconds": round(time.perf_counter() - started, 1),
                     "peak_gpu_gib": None if memory.peak is None else round(memory.peak, 2)})
        print(f"{stage:<21} {rows[-1]['seconds']:>7.1f} s   peak GPU memory added "
              f"{'-' if memory.peak is None else f'{memory.peak:.1f} GiB'}", flush=True)
        if result.returncode != 0:
            raise StageFailed(f"error: stage {stage} failed ({' '.join(map(str, command))} in {work}, kept):\n"
                              f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return rows


class StageFailed(RuntimeError):
    pass


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m llm_fft.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny Llama on the CPU: the same code path in CI")
    parser.add_argument("--work", type=Path, default=None,
                        help="the scratch folder, kept afterwards (default: a temporary one, deleted)")
    parser.add_argument("--out", type=Path, default=GPU_CHECK, help=f"where to write the JSON (default {GPU_CHECK})")
    args = parser.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("error: no CUDA GPU here (torch.cuda.is_available() is False); --smoke runs the same path on the CPU")
    device = "cpu" if args.smoke else "cuda"
    shape = SMOKE if args.smoke else KANANA_SHAPE
    started = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="llm_fft-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    keep = args.work is not None
    try:
        print(f"gpu-check in {work}: a random {'tiny' if args.smoke else 'kanana-shaped'} Llama on {device}",
              flush=True)
        copy_repo(work)
        parameters = write_model(work / "random-model", {**shape, "vocab_size": max(shape["vocab_size"], 2000)},
                                 corpus(work))
        trim_data(work)
        set_params(work, {**PROFILE, "model.name": str(work / "random-model"), "device": device})
        rows = run_stages(work, on_cuda=device == "cuda")
        bench = None
        if not args.smoke:  # make bench's CUDA cases: kanana-shaped training steps, their MFU
            result = subprocess.run([sys.executable, "-m", "llm_fft.bench", "--cuda-only"], cwd=work, text=True)
            if result.returncode != 0:
                raise StageFailed(f"error: make bench's CUDA cases failed (output above; in {work}, kept)")
            bench = json.loads((work / BENCH).read_text(encoding="utf-8"))
        doc = {"device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
               "shape": "smoke" if args.smoke else "kanana-nano-2.1b-base", "parameters": parameters,
               "stages": rows, "total_seconds": round(time.perf_counter() - started, 1),
               "bench": bench and {key: bench[key] for key in ("matmul_ceiling_tflops", "cases", "skipped")}}
        write_atomically(args.out, json.dumps(doc, indent=2) + "\n")
        print(f"gpu-check passed: every stage ran, {doc['total_seconds']:.0f} s in all; wrote {args.out}")
    except StageFailed as e:
        keep = True  # what failed can be looked at
        sys.exit(str(e))
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
