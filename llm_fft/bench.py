"""make bench: time the finetune stage's own training step on fixed work; writes metrics/bench.json.

    python -m llm_fft.bench              # the cases below; prints a table
    python -m llm_fft.bench --smoke      # CI: a tiny random Llama, 2 steps, same code paths and fields
    python -m llm_fft.bench --cuda-only  # only the kanana-shaped CUDA cases (make gpu-check runs it)

Cases, each run bench.repeats times on a fresh copy of its model, with the same examples in the
same order (the JSON gives the median run's real tokens/s with the min and max):
  cpu/notebook-bf16
                 the embedded model, the seed notebook's method as written: weights in bf16
                 (torch_dtype=bfloat16), every example padded with EOS to the dataset's longest,
                 padding learned, no attention mask, plain torch AdamW
  cpu/notebook-fp32
                 the same method on fp32 weights
  cpu/ours-fp32, cpu/ours-bf16-autocast
                 the same model and examples through stages/finetune.py's code (collate: dynamic
                 padding, masked by position; train_step) in fp32, and in bf16 autocast over fp32
                 weights
  cpu/ours-packed
                 ours with finetune.precision and finetune.packing: each batch one row, no padding,
                 attention kept within each example (collate_packed)
  cuda/kanana-dataset, cuda/kanana-packed
                 a randomly initialised LlamaForCausalLM shaped like kanana-nano-2.1b-base (nothing
                 is downloaded), ours with bf16 autocast over fp32 weights, fused AdamW and SDPA, at
                 the dataset's shape and at rows of bench.packed_length tokens; skipped, with the
                 reason in the JSON, where there is no CUDA GPU

  evaluation     answering questions as baseline_eval/final_eval do (batches of evaluate.batch_size,
                 left-padded, sorted by length, weights in evaluate.dtype) against one question at a
                 time, on the same questions, model (models/finetuned if it exists, else models/base)
                 and limit

The ceiling: the machine's bf16 and fp32 matrix products at the model's own shapes (one decoder layer's
and the output head, weighted as a forward pass runs them), in TFLOP/s; each training case reports its
useful work (6 x matmul parameters x real tokens / s) and that as a share of the bf16 ceiling, and the
evaluation case its generated tokens/s.

Throughput counts real tokens only: padding is not work done. The ratios of median real tokens/s
are printed and written under "ratios": at matched precision (fp32 against fp32, bf16 autocast
against the notebook's pure bf16) and ours as the finetune section sets it (finetune.packing: the
packed case; else by finetune.precision) against the notebook as written. Timings on a shared CPU
are noisy: run it on an idle machine. The benchmark is a tool, not a test; CI runs only --smoke.
"""

import argparse
import copy
import gc
import json
import os
import platform
import re
import resource
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, get_scheduler

from llm_fft.batching import IGNORE_INDEX, collate, collate_packed
from llm_fft.evaluation import EVAL_SPEC, eval_dtype
from llm_fft.files import read_jsonl, write_atomically
from llm_fft.generation import Decoding, decoding
from llm_fft.model import converted_embedded, load_base, load_pretrained, prepare_tokenizer
from llm_fft.params import (
    ParamsError,
    fail_if_problems,
    load_params,
    problems_in_section,
    seed_everything,
    shared_problems,
)
from llm_fft.paths import BASE_MODEL, BENCH, BENCH_SMOKE, FINETUNED_MODEL, TRAINED_QA
from llm_fft.prompts import PROMPT_SPEC
from llm_fft.training import FINETUNE_SPEC, autocast_for, make_optimizer, train_step

# The bench section of params.yaml (see llm_fft.params.problems_in_section).
BENCH_SPEC = {
    "repeats": (int, lambda v: v >= 1, "an integer >= 1 (runs of each case; the median is reported)"),
    "evaluation_questions": (int, lambda v: v >= 1, "an integer >= 1 (questions of the evaluation case)"),
    "steps": (int, lambda v: v >= 1, "an integer >= 1 (timed optimizer steps per case)"),
    "warmup_steps": (int, lambda v: v >= 0, "an integer >= 0 (untimed steps before timing)"),
    "gpu_peak_tflops": ((int, float), lambda v: v > 0, "a number > 0 (the GPU's dense bf16 TFLOP/s)"),
    "packed_length": (int, lambda v: v >= 2, "an integer >= 2 (tokens per packed row)"),
    "packed_batch_size": (int, lambda v: v >= 1, "an integer >= 1 (packed rows per step)"),
}
# The finetune keys the benchmark trains with, under the finetune stage's own rules
# (stages/finetune.py checks the whole section).
FINETUNE_KEYS_READ = {key: FINETUNE_SPEC[key] for key in ("lr", "batch_size", "weight_decay", "warmup_steps",
                                                         "lr_schedule", "max_grad_norm", "precision",
                                                         "packing")}

# kakaocorp/kanana-nano-2.1b-base's shape: every config field that sets the cost of a step. Tied embeddings:
# 2,086,979,328 parameters, 4.17 GB in bf16, the size of its model.safetensors (untied would be 4.63 GB).
KANANA_SHAPE = dict(hidden_size=1792, intermediate_size=8064, num_hidden_layers=32, num_attention_heads=24,
                    head_dim=128, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True,
                    max_position_embeddings=8192)
# A Llama small enough for CI: the same code paths in seconds.
SMOKE_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   head_dim=16, num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True,
                   max_position_embeddings=512)
SMOKE_STEPS, SMOKE_WARMUP, SMOKE_PACKED_LENGTH, SMOKE_REPEATS = 2, 1, 64, 2


# --- The work: fixed batches, the same for every case ----------------------------------------------

def fixed_examples(records, batch_size, count):
    """`count` batches of examples: the records in file order, cycled. Every case gets these."""
    return [[records[(i * batch_size + j) % len(records)] for j in range(batch_size)] for i in range(count)]


def notebook_batch(examples, pad_to, eos_id):
    """The seed notebook's batch: every example padded with EOS to the dataset's longest.

    Labels are input_ids with the prompt masked, so the padding EOS are learned as well, and no
    attention mask is passed: the model attends to the padding too. Reproduced as it was, to compare.
    """
    input_ids = torch.tensor([e["input_ids"] + [eos_id] * (pad_to - len(e["input_ids"])) for e in examples])
    labels = input_ids.clone()
    for row, e in enumerate(examples):
        labels[row, :len(e["q_ids"])] = IGNORE_INDEX
    return {"input_ids": input_ids, "labels": labels}


def packed_batches(records, rows, length, count):
    """Batches of `rows` rows of exactly `length` tokens: the examples laid end to end, cycled.

    A throughput shape only: examples sharing a row can attend to each other, which is fine for
    timing and wrong for training (that needs boundary-aware attention).
    """
    need = rows * length * count
    input_ids, labels, i = [], [], 0
    while len(input_ids) < need:
        record = records[i % len(records)]
        input_ids += record["input_ids"]
        labels += record["labels"]
        i += 1
    input_ids = torch.tensor(input_ids[:need]).view(count, rows, length)
    labels = torch.tensor(labels[:need]).view(count, rows, length)
    return [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": lab}
            for ids, lab in zip(input_ids, labels)]


def synthetic_records(count, vocab_size, seed):
    """Records shaped like data/trained_qa.jsonl (a prompt, then an answer and EOS), from seeded random ids."""
    generator = torch.Generator().manual_seed(seed)
    records = []
    for _ in range(count):
        prompt_len, answer_len = (int(n) for n in torch.randint(6, 24, (2,), generator=generator))
        ids = torch.randint(3, vocab_size, (prompt_len + answer_len,), generator=generator).tolist() + [2]
        records.append({"q_ids": ids[:prompt_len], "input_ids": ids,
                        "labels": [IGNORE_INDEX] * prompt_len + ids[prompt_len:]})
    return records


def real_tokens(examples):
    """Tokens of the examples themselves, whatever padding a method adds: the work to be done."""
    return sum(len(e["input_ids"]) for e in examples)


# --- The steps: the notebook's, and ours (stages/finetune.py's own code) ----------------------------

def notebook_step(model, batch, optimizer):
    """The seed notebook's loop body: forward with labels, backward, step, zero_grad (no clipping,
    no learning-rate schedule)."""
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss.item()


def notebook_stepper(model, cfg, total_steps, device):
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    return lambda batch: notebook_step(model, batch, optimizer)


def ours_stepper(model, cfg, total_steps, device):
    """train_step with the optimizer, schedule and precision stages/finetune.py sets up."""
    optimizer = make_optimizer(model, cfg["lr"], cfg["weight_decay"])
    scheduler = get_scheduler(cfg["lr_schedule"], optimizer, num_warmup_steps=cfg["warmup_steps"],
                              num_training_steps=total_steps)
    autocast = autocast_for(device, cfg["precision"])
    return lambda batch: train_step(model, batch, optimizer, scheduler, cfg["max_grad_norm"], autocast)[0]


# --- Measuring -----------------------------------------------------------------------------------

def reset_peak_memory(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: writing 5 resets VmHWM, the process's peak resident memory
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # elsewhere the peak is the process's since it started (see memory_measure)


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    status = Path("/proc/self/status")
    found = re.search(r"^VmHWM:\s+(\d+) kB", status.read_text(), re.M) if status.exists() else None
    if found:
        return int(found.group(1)) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 1024


def memory_measure():
    if Path("/proc/self/clear_refs").exists():
        return "cpu: peak process RSS during the case (VmHWM, reset per case); cuda: torch.cuda.max_memory_allocated"
    return "cpu: peak process RSS since the process started (ru_maxrss); cuda: torch.cuda.max_memory_allocated"


def matmul_parameters(model):
    """Parameters that cost 6 FLOPs per token in a training step (forward 2, backward 4).

    The input embedding is a table lookup, not a matmul, so it is left out, unless the output
    head shares its matrix (tied weights), where it is a matmul after all.
    """
    total = sum(p.numel() for p in model.parameters())
    embedding, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    return total - (0 if head is embedding else embedding.numel())


def mfu(model, real_tokens, seconds, peak_tflops):
    """Model FLOPs utilisation: 6 x parameters x real tokens / elapsed / peak bf16 FLOP/s."""
    return 6 * matmul_parameters(model) * real_tokens / seconds / (peak_tflops * 1e12)


def useful_tflops(model, real_tokens, seconds):
    """The training step's useful work per second: 6 x matmul parameters x real tokens (TFLOP/s)."""
    return 6 * matmul_parameters(model) * real_tokens / seconds / 1e12


def matmul_ceiling(config, device, tokens, repeats=5, calls=8):
    """What this machine's matrix products reach at the model's own shapes: {dtype: TFLOP/s}.

    One decoder layer's products (q, k, v, o, gate, up, down) and the output head, each on `tokens`
    rows (about a training step's), weighted as a forward pass runs them (every layer, the head once).
    Each product is timed as `calls` back-to-back calls between two synchronisations, after one
    untimed call, `repeats` times (the fastest kept): on a GPU a single small product would time
    its launch. It is the bound a training step's useful TFLOP/s is a share of."""
    hidden, inner, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    kv = config.num_key_value_heads * head_dim
    layer = [(hidden, config.num_attention_heads * head_dim), (hidden, kv), (hidden, kv),
             (config.num_attention_heads * head_dim, hidden), (hidden, inner), (hidden, inner), (inner, hidden)]
    products = [(shape, config.num_hidden_layers) for shape in layer] + [((hidden, vocab), 1)]
    ceiling = {}
    for dtype in (torch.bfloat16, torch.float32):
        flops = seconds = 0.0
        for (k, n), count in products:
            a = torch.randn(tokens, k, device=device, dtype=dtype)
            b = torch.randn(k, n, device=device, dtype=dtype)
            torch.mm(a, b)
            times = []
            for _ in range(repeats):
                sync(device)
                started = time.perf_counter()
                for _ in range(calls):
                    torch.mm(a, b)
                sync(device)
                times.append((time.perf_counter() - started) / calls)
            flops += count * 2 * tokens * k * n
            seconds += count * min(times)
        ceiling[str(dtype).removeprefix("torch.")] = float(f"{flops / seconds / 1e12:.4g}")
    return ceiling


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(name, method, model, model_label, step_for, batches, real_counts, warmup, cfg, device, peak_tflops,
             examples_per_batch=None):
    """Time one case on `batches` (the first `warmup` untimed) and return its row for the JSON.

    real_counts[i] is the number of real (non-padding) tokens in batches[i]; examples_per_batch is
    the batch size where it is not the number of rows (a packed batch is one row).

    `model` must be a fresh copy: training changes it. Each step's time includes moving its
    batch to the device, as the finetune loop does.
    """
    model.to(device)
    model.config.use_cache = False  # as in stages/finetune.py: the KV cache only helps generation
    model.train()
    reset_peak_memory(device)  # the optimizer state, made in the first step, belongs to the case
    step = step_for(model, cfg, len(batches), device)
    step_seconds, real, padded = [], 0, 0
    for i, (batch, real_count) in enumerate(zip(batches, real_counts, strict=True)):
        sync(device)
        started = time.perf_counter()
        loss = step({k: v.to(device) for k, v in batch.items()})
        sync(device)
        if i < warmup:
            continue
        step_seconds.append(time.perf_counter() - started)
        real, padded = real + real_count, padded + batch["input_ids"].numel()
    seconds = sum(step_seconds)
    return {
        "name": name, "method": method, "device": str(device), "model": model_label,
        "parameters": sum(p.numel() for p in model.parameters()),
        "batch_size": examples_per_batch or len(batches[0]["input_ids"]), "steps": len(step_seconds),
        "real_tokens": real, "padded_tokens": padded,
        "seconds": round(seconds, 4),
        "real_tokens_per_s": round(real / seconds, 1),
        "step_s": round(statistics.median(step_seconds), 4),
        "peak_memory_mb": round(peak_memory_mb(device), 1),
        "mfu": round(mfu(model, real, seconds, peak_tflops), 4) if device.type == "cuda" else None,
        "useful_tflops": round(useful_tflops(model, real, seconds), 6),
        "last_loss": round(loss, 4),
    }


def median_run(runs):
    """One row for a case run several times: the run of median real tokens/s, with the min and max
    over the runs (an odd count has one median run; an even count takes the lower one's fields)."""
    ranked = sorted(runs, key=lambda r: r["real_tokens_per_s"])
    row = dict(ranked[(len(ranked) - 1) // 2])
    speeds = [r["real_tokens_per_s"] for r in ranked]
    return {**row, "repeats": len(runs), "real_tokens_per_s_min": speeds[0], "real_tokens_per_s_max": speeds[-1]}


# --- The cases -----------------------------------------------------------------------------------

def load_cpu_model(params, smoke):
    """(model, pad/EOS id, label): the model stages/finetune.py trains, or a tiny one for --smoke."""
    if smoke:
        model = AutoModelForCausalLM.from_config(LlamaConfig(**SMOKE_SHAPE), dtype=torch.float32)
        return model, 2, "random tiny LlamaForCausalLM (smoke)"
    if (BASE_MODEL / "config.json").is_file():  # what finetune trains, written by prepare_model
        model, tokenizer = load_pretrained(BASE_MODEL, torch.float32, torch.device("cpu"))
        label = f"{params['model']['name']} ({BASE_MODEL})"
    else:
        m = params["model"]
        model, tokenizer = load_base(m["name"], m["revision"], m["trust_remote_code"], torch.float32)
        label = m["name"]
    return model, prepare_tokenizer(tokenizer).pad_token_id, label


def cpu_model_config(params):
    """The config of the model the CPU cases train (models/base, else the model params.yaml names);
    for a multimodal config, its text model's."""
    config = (AutoConfig.from_pretrained(BASE_MODEL) if (BASE_MODEL / "config.json").is_file()
              else load_cpu_model(params, smoke=False)[0].config)
    return config.get_text_config()


CPU_CASES = ("cpu/notebook-bf16", "cpu/notebook-fp32", "cpu/ours-fp32", "cpu/ours-bf16-autocast", "cpu/ours-packed")


def cpu_cases(params, records, batch_size, steps, warmup, repeats, smoke):
    """The CPU_CASES, each run `repeats` times: one model loaded once, a fresh deep copy per run."""
    cfg, cpu = params["finetune"], torch.device("cpu")
    template, pad_id, label = load_cpu_model(params, smoke)
    examples = fixed_examples(records, batch_size, warmup + steps)
    longest = max(len(r["input_ids"]) for r in records)
    real_counts = [real_tokens(e) for e in examples]
    notebook = [notebook_batch(e, longest, pad_id) for e in examples]
    padded, packed = [collate(e, pad_id) for e in examples], [collate_packed(e) for e in examples]
    # (name, method, step, batches, weights dtype, finetune.precision for ours)
    cases = [("cpu/notebook-bf16", "notebook as written (bf16 weights)", notebook_stepper, notebook, torch.bfloat16, None),
             ("cpu/notebook-fp32", "notebook, fp32 weights", notebook_stepper, notebook, torch.float32, None),
             ("cpu/ours-fp32", "ours, fp32", ours_stepper, padded, torch.float32, "fp32"),
             ("cpu/ours-bf16-autocast", "ours, bf16 autocast", ours_stepper, padded, torch.float32, "bf16-autocast"),
             ("cpu/ours-packed", f"ours, packing ({cfg['precision']})", ours_stepper, packed, torch.float32,
              cfg["precision"])]
    rows = []
    for name, method, step_for, batches, dtype, precision in cases:
        runs = []
        for _ in range(repeats):
            seed_everything(params["seed"])
            model = copy.deepcopy(template).to(dtype)
            runs.append(run_case(name, method, model, label, step_for, batches, real_counts, warmup,
                                 {**cfg, "precision": precision or cfg["precision"]}, cpu, None,
                                 examples_per_batch=batch_size))
            del model
            gc.collect()
        rows.append(median_run(runs))
    return rows


def evaluation_case(params, records, repeats, smoke):
    """Batched answering (the evaluation stages' code and evaluate.batch_size) against one question
    at a time, on the same questions (the first bench.evaluation_questions), model and generation
    limit, each timed `repeats` times; the ratio of the median times is what batching buys."""
    cpu = torch.device("cpu")
    model_dir = FINETUNED_MODEL if (FINETUNED_MODEL / "config.json").is_file() else BASE_MODEL
    if smoke:
        # The tiny random Llama; the embedded tokenizer only pads and decodes its small ids.
        tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(converted_embedded()))
        model = AutoModelForCausalLM.from_config(LlamaConfig(**SMOKE_SHAPE), dtype=torch.float32)
        label, records = "random tiny LlamaForCausalLM (smoke)", records[:6]
        protocol = Decoding(8, (2,), (), params["evaluate"]["batch_size"])
    else:
        # The evaluations' own weights dtype and decoding
        model, tokenizer = load_pretrained(model_dir, eval_dtype(params["evaluate"]["dtype"], cpu), cpu)
        label, protocol = str(model_dir), decoding(tokenizer, params["prompt"], params["evaluate"])
        records = records[:params["bench"]["evaluation_questions"]]
    one_at_a_time = replace(protocol, batch_size=1)
    model.eval()
    batched_times, sequential_times = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        batched = protocol.answer(model, tokenizer, records, cpu)
        batched_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        one_by_one = [one_at_a_time.answer(model, tokenizer, [r], cpu)[0] for r in records]
        sequential_times.append(time.perf_counter() - started)
    batched_s = round(statistics.median(batched_times), 4)  # the ratio is of what is shown
    sequential_s = round(statistics.median(sequential_times), 4)
    generated = sum(a["generated_tokens"] for a in batched)
    return {"name": "cpu/evaluation", "model": label, "dtype": str(model.dtype).removeprefix("torch."),
            "questions": len(records), "batch_size": protocol.batch_size,
            "max_new_tokens": protocol.max_new_tokens, "generated_tokens": generated,
            "generated_tokens_per_s": round(generated / batched_s, 1),
            "repeats": repeats, "batched_s": batched_s, "sequential_s": sequential_s,
            "batched_s_min_max": [round(min(batched_times), 4), round(max(batched_times), 4)],
            "sequential_s_min_max": [round(min(sequential_times), 4), round(max(sequential_times), 4)],
            "batched_vs_sequential_ratio": round(sequential_s / batched_s, 2),
            "same_answers": batched == one_by_one}


KANANA_CASES = ("cuda/kanana-dataset", "cuda/kanana-packed")


def kanana_cases(params, records, batch_size, steps, warmup, repeats, smoke, device):
    """The kanana-shaped cases, ours only, each on a freshly initialised model: (rows, skipped).

    Run on CUDA; `device` is a parameter so that everything but the GPU itself can be tested on a
    CPU. A case that runs out of GPU memory is recorded as skipped, with the reason.
    """
    bench, cfg = params["bench"], params["finetune"]
    shape = SMOKE_SHAPE if smoke else KANANA_SHAPE
    label = ("random tiny LlamaForCausalLM (smoke)" if smoke
             else "random LlamaForCausalLM, kanana-nano-2.1b-base shape")
    packed_length = SMOKE_PACKED_LENGTH if smoke else bench["packed_length"]
    longest = max(max(len(r["input_ids"]) for r in records), packed_length)
    if longest > shape["max_position_embeddings"]:
        raise ValueError(f"bench: sequences of {longest} tokens exceed the model's "
                         f"{shape['max_position_embeddings']} positions")
    vocab = shape["vocab_size"]  # only the shape matters: ids of a larger vocabulary are folded into this one
    records = [{**r, "input_ids": [t % vocab for t in r["input_ids"]],
                "labels": [t if t == IGNORE_INDEX else t % vocab for t in r["labels"]]} for r in records]
    examples = fixed_examples(records, batch_size, warmup + steps)
    packed = packed_batches(records, bench["packed_batch_size"], packed_length, warmup + steps)
    work = {  # (batches, real tokens per batch); any pad id works: padding is masked by position
        KANANA_CASES[0]: ([collate(e, 0) for e in examples], [real_tokens(e) for e in examples]),
        KANANA_CASES[1]: (packed, [b["input_ids"].numel() for b in packed]),
    }
    peak_tflops = bench["gpu_peak_tflops"] if device.type == "cuda" else None
    rows, skipped = [], []
    for name in KANANA_CASES:
        runs = []
        try:
            for _ in range(repeats):
                seed_everything(params["seed"])
                model = None
                with device:  # initialise on the device: 2.1B parameters are slow to fill on a CPU
                    model = AutoModelForCausalLM.from_config(LlamaConfig(**shape), dtype=torch.float32,
                                                             attn_implementation="sdpa")
                runs.append(run_case(name, "ours", model, label, ours_stepper, *work[name], warmup, cfg, device,
                                     peak_tflops))
                model = None
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            rows.append(median_run(runs))
        except torch.cuda.OutOfMemoryError as e:
            skipped.append({"name": name, "reason": f"out of GPU memory: {str(e).splitlines()[0]}"})
        finally:
            model = None
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows, skipped


# --- Report --------------------------------------------------------------------------------------

def machine():
    cpu_name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.M)
        cpu_name = found.group(1).strip() if found else cpu_name
    return {
        "cpu": cpu_name, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def ratios(cases, finetune):
    """Median real tokens/s of ours over the notebook's: at matched precision, and ours as the finetune
    section sets it on this CPU (finetune.packing: the packed case; else finetune.precision, auto: bf16
    autocast where bf16 is native) against the notebook as written. None where a case did not run, or
    unpacked finetune.precision is bf16-pure (no case runs it)."""
    speed = {c["name"]: c["real_tokens_per_s"] for c in cases}
    # Which case finetune would train as: autocast_for's own rule, not a copy of it.
    autocast = isinstance(autocast_for(torch.device("cpu"), finetune["precision"]), torch.autocast)
    default = ("packed" if finetune["packing"] else None if finetune["precision"] == "bf16-pure"
               else "bf16-autocast" if autocast else "fp32")
    if f"cpu/ours-{default}" not in speed:  # --cuda-only: no CPU case ran
        default = None

    def ratio(ours, notebook):
        return round(speed[ours] / speed[notebook], 3) if ours in speed and notebook in speed else None

    return {"fp32_ours_vs_notebook_ratio": ratio("cpu/ours-fp32", "cpu/notebook-fp32"),
            "bf16_ours_autocast_vs_notebook_pure_ratio": ratio("cpu/ours-bf16-autocast", "cpu/notebook-bf16"),
            "default_ours_vs_notebook_as_written_ratio":
                ratio(f"cpu/ours-{default}", "cpu/notebook-bf16") if default else None,
            "default_case": f"cpu/ours-{default}" if default else None}


def report(cases, skipped, settings, evaluation, finetune, ceiling):
    """The JSON document: fixed keys in a fixed order, whatever ran. ceiling: {device: matmul_ceiling};
    each case gets its useful TFLOP/s as a share of its device's ceiling, the faster of bf16 and fp32
    there (bf16 where it is native; on a CPU without it, fp32)."""
    for case in cases:
        best = max(ceiling.get(case["device"].split(":")[0], {}).values(), default=None)
        case["share_of_ceiling"] = round(case["useful_tflops"] / best, 4) if best else None
    return {"machine": machine(), "settings": settings, "memory_measure": memory_measure(),
            "matmul_ceiling_tflops": ceiling, "cases": cases, "ratios": ratios(cases, finetune),
            "skipped": skipped, "evaluation": evaluation}


def table(doc):
    """A short aligned table of the cases, the ratio and the skipped cases."""
    header = ("case", "device", "real tok/s (min-max)", "step s", "peak MB", "TFLOP/s", "of ceiling", "MFU",
              "real/padded tokens")
    rows = [(c["name"], c["device"],
             f"{c['real_tokens_per_s']:.1f} ({c['real_tokens_per_s_min']:.1f}-{c['real_tokens_per_s_max']:.1f})",
             f"{c['step_s']:.3f}", f"{c['peak_memory_mb']:.0f}", f"{c['useful_tflops']:.3f}",
             "-" if c["share_of_ceiling"] is None else f"{c['share_of_ceiling']:.1%}",
             "-" if c["mfu"] is None else f"{c['mfu']:.1%}",
             f"{c['real_tokens']}/{c['padded_tokens']}") for c in doc["cases"]]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in [header, *rows]]
    lines += [f"{name}: {value:.2f}x" for name, value in doc["ratios"].items()
              if name.endswith("_ratio") and value is not None]
    lines += [f"skipped {s['name']}: {s['reason']}" for s in doc["skipped"]]
    lines += [f"matrix products at the model's shapes, {device}: " + ", ".join(f"{dtype} {tflops:.3f} TFLOP/s"
                                                                            for dtype, tflops in ceiling.items())
              for device, ceiling in doc["matmul_ceiling_tflops"].items()]
    e = doc["evaluation"]
    if e:
        lines.append(f"evaluation, {e['questions']} questions ({e['model']}, {e['dtype']}), medians of {e['repeats']}: "
                     f"batched (batch {e['batch_size']}) {e['batched_s']:.1f} s ({e['generated_tokens_per_s']:.0f} "
                     f"generated tok/s), one at a time {e['sequential_s']:.1f} s: "
                     f"{e['batched_vs_sequential_ratio']:.2f}x; same answers: {e['same_answers']}")
    return "\n".join(lines)


def check_params(params):
    """Every problem with the sections the benchmark reads, before any model is loaded."""
    finetune = params.get("finetune")
    read = {k: v for k, v in finetune.items() if k in FINETUNE_KEYS_READ} if isinstance(finetune, dict) else finetune
    problems = (problems_in_section(params, "bench", BENCH_SPEC)
                + problems_in_section({"finetune": read}, "finetune", FINETUNE_KEYS_READ)
                + problems_in_section(params, "evaluate", EVAL_SPEC) + problems_in_section(params, "prompt", PROMPT_SPEC)
                + shared_problems(params, keys=["seed"]))
    fail_if_problems(problems)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m llm_fft.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help=f"CI mode: a tiny random Llama on synthetic data, {SMOKE_STEPS} steps per case")
    parser.add_argument("--cuda-only", action="store_true",
                        help="only the kanana-shaped CUDA cases: no CPU cases, no evaluation case")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"where to write the JSON (default {BENCH}; with --smoke {BENCH_SMOKE})")
    args = parser.parse_args(argv)
    if args.cuda_only and not torch.cuda.is_available():
        sys.exit("error: --cuda-only needs a CUDA GPU, and torch.cuda.is_available() is False here")
    params = load_params()
    check_params(params)
    bench, batch_size = params["bench"], params["finetune"]["batch_size"]
    steps, warmup, repeats = ((SMOKE_STEPS, SMOKE_WARMUP, SMOKE_REPEATS) if args.smoke
                              else (bench["steps"], bench["warmup_steps"], bench["repeats"]))
    if args.smoke:
        records = synthetic_records(16, SMOKE_SHAPE["vocab_size"], params["seed"])
    elif TRAINED_QA.is_file():
        records = read_jsonl(TRAINED_QA)
    else:
        sys.exit(f"error: {TRAINED_QA} is missing: run `dvc repro parse_qa` first (it tokenizes data/dataset.txt)")
    settings = {"smoke": args.smoke, "steps": steps, "warmup_steps": warmup, "repeats": repeats,
                "batch_size": batch_size, "precision": params["finetune"]["precision"],
                "examples": len(records), "seed": params["seed"], "gpu_peak_tflops": bench["gpu_peak_tflops"],
                "packing": params["finetune"]["packing"],
                "packed_length": SMOKE_PACKED_LENGTH if args.smoke else bench["packed_length"],
                "packed_batch_size": bench["packed_batch_size"]}

    # The ceilings at about each device's rows per step: a CPU step's here, a packed CUDA step's.
    ceiling = {}
    if not args.cuda_only:
        ceiling["cpu"] = matmul_ceiling(LlamaConfig(**SMOKE_SHAPE) if args.smoke else cpu_model_config(params),
                                        torch.device("cpu"), tokens=512)
    if torch.cuda.is_available():
        ceiling["cuda"] = matmul_ceiling(LlamaConfig(**(SMOKE_SHAPE if args.smoke else KANANA_SHAPE)),
                                         torch.device("cuda"), tokens=settings["packed_length"] * bench["packed_batch_size"])
    cases = [] if args.cuda_only else cpu_cases(params, records, batch_size, steps, warmup, repeats, args.smoke)
    if torch.cuda.is_available():
        cuda_rows, skipped = kanana_cases(params, records, batch_size, steps, warmup, repeats, args.smoke,
                                          torch.device("cuda"))
    else:
        cuda_rows = []
        skipped = [{"name": n, "reason": "no CUDA GPU here (torch.cuda.is_available() is False)"}
                   for n in KANANA_CASES]
    evaluation = None if args.cuda_only else evaluation_case(params, records, repeats, args.smoke)
    doc = report(cases + cuda_rows, skipped, settings, evaluation, params["finetune"], ceiling)
    out = args.out or (BENCH_SMOKE if args.smoke else BENCH)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(out, json.dumps(doc, indent=2) + "\n")
    print(table(doc))
    print(f"wrote {out}")
    return doc


if __name__ == "__main__":
    try:
        main()
    except ParamsError as e:  # the library raises; the command says why in one message and exits non-zero
        sys.exit(f"error: {e}")
