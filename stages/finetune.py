"""Stage finetune: train every weight of the base model on the answers (full fine-tuning).

    python -m stages.finetune

Reads finetune.*, model.dtype, seed and device in params.yaml, data/trained_qa.jsonl (the question/answer
pairs), data/statements_qa.jsonl (the facts as plain text), data/rehearsal.jsonl (the base model's own
text; finetune.rehearsal_ratio of it is mixed into every epoch, learned by cross-entropy or, with
finetune.rehearsal_loss kl, distilled from the base model's distributions stored in
data/rehearsal_teacher.safetensors), data/dev_qa.jsonl and models/base.
It never reads the held-out questions: they only report. Writes models/finetuned (save_pretrained:
model and tokenizer; the last epoch's weights, or with finetune.select_epoch best_dev_loss the epoch
whose dev answer loss was lowest) and, through DVCLive, metrics/finetune/ (loss and learning rate per
step, and the dev answer loss at the end of each epoch, for `dvc plots show`; summary metrics.json
with the epoch kept). The dev loss is teacher-forced: no generation inside training.
Every finetune.checkpoint_minutes of training (and/or every finetune.checkpoint_every steps) it saves a
checkpoint to models/checkpoints/finetune/ (not a DVC output, so it survives a crash); the next run
resumes from it and deletes it when done.
With finetune.processes N > 1 it starts itself N times under accelerate: DDP, or FSDP2 with finetune.fsdp.
"""

import hashlib
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch
from dvclive import Live
from torch.utils.data import DataLoader, RandomSampler
from tqdm import tqdm
from transformers import get_scheduler
from transformers.trainer_pt_utils import LengthGroupedSampler

from llm_fft.batching import collate, collate_packed
from llm_fft.distill import batch_teacher, load_teacher
from llm_fft.files import read_jsonl
from llm_fft.model import DTYPES, load_pretrained, save_model
from llm_fft.nll import answer_nll
from llm_fft.params import (
    ParamsError,
    fail_if_problems,
    load_params,
    native_bf16,
    pick_device,
    problems_in_section,
    seed_everything,
    shared_problems,
)
from llm_fft.paths import (
    BASE_MODEL,
    CHECKPOINT,
    CHECKPOINTS,
    DEV_QA,
    FINETUNE_LIVE,
    FINETUNED_MODEL,
    REHEARSAL,
    REHEARSAL_TEACHER,
    STATEMENTS_QA,
    TRAINED_QA,
)
from llm_fft.training import (
    FINETUNE_SPEC,
    Processes,
    TrainingError,
    autocast_for,
    epoch_examples,
    gather_training_state,
    load_checkpoint,
    make_optimizer,
    master_dtype,
    restore_rng,
    restore_training_state,
    run_fingerprint,
    save_checkpoint,
    snapshot_weights,
    speed_up,
    train_step,
)

ACCELERATE_CONFIG = Path("configs/accelerate.yaml")


def main():
    params = check_params()
    cfg, seed = params["finetune"], params["seed"]
    launch_if_multiprocess(cfg["processes"])  # N > 1: this process starts N copies of itself and waits
    data = load_data(cfg, seed)
    steps_per_epoch = math.ceil(data.per_epoch / cfg["batch_size"])
    total_steps = cfg["epochs"] * steps_per_epoch
    keep_best = cfg["select_epoch"] == "best_dev_loss"
    # A checkpoint of another run is refused before any model is loaded.
    fingerprint = fingerprint_of(params)
    checkpoint = load_checkpoint(CHECKPOINT, fingerprint)
    seed_everything(seed)
    procs = Processes(pick_device(params["device"]), cfg["fsdp"])
    model, tokenizer, optimizer, scheduler = set_up(cfg, procs, total_steps)
    # history: (loss, lr, dev answer loss or None) of every step done, replayed into DVCLive.
    # best: (epoch, dev loss, whole weights on the CPU) of the lowest dev loss so far (best_dev_loss).
    start_step, history, best = 0, [], None
    if checkpoint:
        start_step, history, best = resume(checkpoint, model, optimizer, scheduler)
        if procs.is_main:
            print(f"resuming from {CHECKPOINT} at step {start_step}/{total_steps}")
    del checkpoint  # a second copy of the weights and optimizer state
    autocast = autocast_for(procs.device, cfg["precision"])
    if procs.is_main:
        print(plan(model, procs, cfg, data, total_steps))

    log = Log(procs.is_main, history, start_step, total_steps, cfg["log_every"])
    step, last_checkpoint = start_step, time.monotonic()
    for epoch in range(1, cfg["epochs"] + 1):
        for batch_index, global_batch in enumerate(epoch_batches(data, cfg, seed, epoch)):
            if (epoch - 1) * steps_per_epoch + batch_index < start_step:
                continue  # done before the crash
            step += 1
            loss, lr, grad_norm = train_one_step(model, optimizer, scheduler, autocast, global_batch, tokenizer,
                                                 cfg, procs)
            if not math.isfinite(loss):
                log.end()
                sys.exit(f"error: loss is {loss} at step {step} (epoch {epoch}); no model saved. "
                         f"Try a lower finetune.lr (now {cfg['lr']}).")
            # The epoch's last step: the dev answer loss, and the best epoch's weights kept so far.
            dev_nll = None
            if data.dev and batch_index == steps_per_epoch - 1 and procs.computes_dev_loss(keep_best):
                dev_nll = dev_answer_loss(procs.unwrap(model), data.dev, cfg["batch_size"], tokenizer.pad_token_id,
                                          procs.device)
                log.write(f"epoch {epoch:3d} done | dev answer loss {dev_nll:.4f}")
                if keep_best and (best is None or dev_nll < best[1]):
                    best = None  # free the old copy before gathering the new one
                    best = (epoch, dev_nll, snapshot_weights(model))  # a whole CPU copy (FSDP: in the first process)
            history.append((loss, lr, dev_nll))
            log.step(step, epoch, global_batch, loss, lr, grad_norm, dev_nll)
            if step < total_steps and checkpoint_due(cfg, step, time.monotonic() - last_checkpoint, procs):
                started = time.monotonic()
                write_checkpoint(procs, model, optimizer, scheduler, fingerprint, step, history, best)
                last_checkpoint = time.monotonic()
                log.write(f"checkpoint at step {step} saved in {last_checkpoint - started:.1f}s: {CHECKPOINT}")
    log.close()

    # The weights kept: the best epoch's, or the last ones (FSDP: gathered whole by every process).
    kept_epoch, kept_nll, weights = best if keep_best else (cfg["epochs"], None, procs.whole_weights(model))
    if procs.is_main:
        log.end(kept_epoch, kept_nll)
        save_model(procs.unwrap(model), tokenizer, FINETUNED_MODEL, DTYPES[params["model"]["dtype"]], weights)
        shutil.rmtree(CHECKPOINTS, ignore_errors=True)  # finished: nothing left to resume
        kept_by = "lowest dev answer loss" if keep_best else "the last"
        print(f"wrote {FINETUNED_MODEL} (epoch {kept_epoch} of {cfg['epochs']}, {kept_by}) after {step} steps in "
              f"{log.elapsed():.0f}s; last loss {loss:.4f}")
    procs.end()


# --- The steps of main, in order -------------------------------------------------------------------

def check_params():
    """params.yaml, with every problem of the keys finetune reads reported at once (and exit)."""
    params = load_params()
    problems = shared_problems(params) + problems_in_section(params, "finetune", FINETUNE_SPEC)
    if params.get("model", {}).get("dtype") not in DTYPES:
        problems.append(f"params.yaml: model.dtype must be one of {', '.join(DTYPES)}")
    cfg = params.get("finetune") or {}
    if cfg.get("fsdp") is True and cfg.get("processes") == 1:
        problems.append("params.yaml: finetune.fsdp shards the model over processes: set finetune.processes > 1")
    fail_if_problems(problems)
    return params


def launch_if_multiprocess(processes):
    """Start finetune.processes copies of this stage under accelerate (DDP, or FSDP), and exit with
    their status when they are done. Returns at once with one process, and in the copies (accelerate
    sets WORLD_SIZE in them)."""
    if processes > 1 and "WORLD_SIZE" not in os.environ:
        sys.exit(subprocess.call([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                                  str(ACCELERATE_CONFIG), "--num_processes", str(processes),
                                  # the copies start as this one did: as a module (dvc.yaml) or a file
                                  *(["-m", __spec__.name] if __spec__ else [__file__])]))


class Data(NamedTuple):
    task: list       # the question/answer pairs and the facts as plain text: every epoch trains on all of them
    rehearsal: list  # the base model's own texts; each epoch mixes in a seeded draw of them
    dev: list        # the dev questions, for the dev answer loss (never the held-out ones: they only report)
    per_epoch: int   # examples per epoch: the task and its rehearsal draw


def load_data(cfg, seed):
    """The task, the rehearsal pool and the dev questions; warns when one batch holds the whole epoch."""
    task = read_jsonl(TRAINED_QA) + read_jsonl(STATEMENTS_QA)
    # With rehearsal_loss = kl each rehearsal text carries its rows of the base model's stored distributions.
    rehearsal = read_jsonl(REHEARSAL) if cfg["rehearsal_ratio"] else []
    if rehearsal and cfg["rehearsal_loss"] == "kl":
        try:
            rehearsal = [{**r, "teacher": t} for r, t in zip(rehearsal, load_teacher(REHEARSAL_TEACHER, rehearsal))]
        except ValueError as e:
            raise TrainingError(f"finetune.rehearsal_loss kl: {e}") from e
    dev = read_jsonl(DEV_QA)
    if cfg["select_epoch"] == "best_dev_loss" and not dev:
        raise TrainingError(f"finetune.select_epoch = best_dev_loss needs dev questions, and {DEV_QA} has none "
                            "(add dev phrasings to the facts file, or with the file backend pairs to "
                            "generate_dataset.dev_file; or set finetune.select_epoch: last and, since the dev "
                            "questions also choose the interpolation weight, interpolate.weights: [1.0])")
    per_epoch = len(epoch_examples(task, rehearsal, cfg["rehearsal_ratio"], seed, 1))
    if cfg["batch_size"] > per_epoch:
        print(f"warning: finetune.batch_size {cfg['batch_size']} > {per_epoch} examples: "
              f"every batch is the whole dataset")
    return Data(task, rehearsal, dev, per_epoch)


def fingerprint_of(params):
    """What a checkpoint must match to be resumed: the params and every file the stage reads (the
    stored teacher distributions only where rehearsal_loss kl reads them)."""
    fingerprint = run_fingerprint(params, TRAINED_QA, BASE_MODEL)
    cfg = params["finetune"]
    distils = cfg["rehearsal_loss"] == "kl" and cfg["rehearsal_ratio"] > 0
    for name, path in (("statements", STATEMENTS_QA), ("rehearsal", REHEARSAL), ("dev", DEV_QA),
                       *([("teacher", REHEARSAL_TEACHER)] if distils else [])):
        fingerprint[name] = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None
    return fingerprint


def set_up(cfg, procs, total_steps):
    """(model, tokenizer, optimizer, scheduler), the model in training mode and wrapped for the processes."""
    if cfg["batch_size"] % procs.world:
        raise TrainingError(f"finetune.batch_size {cfg['batch_size']} must be a multiple of the "
                            f"{procs.world} processes")
    # fp32 master weights whatever the dtype on disk (unless bf16-pure); autocast only lowers the matmuls.
    model, tokenizer = load_pretrained(BASE_MODEL, master_dtype(cfg["precision"]), procs.load_device)
    model.config.use_cache = False  # the KV cache only helps generation
    model = procs.wrap(speed_up(model, cfg["gradient_checkpointing"], cfg["compile"]))
    model.train()
    optimizer = make_optimizer(model, cfg["lr"], cfg["weight_decay"])
    scheduler = get_scheduler(cfg["lr_schedule"], optimizer, num_warmup_steps=cfg["warmup_steps"],
                              num_training_steps=total_steps)
    return model, tokenizer, optimizer, scheduler


def resume(checkpoint, model, optimizer, scheduler):
    """Put back the weights, AdamW and schedule state and the RNGs of the checkpoint (every process
    takes its part); returns (steps done, history, best)."""
    restore_training_state(model, optimizer, checkpoint["model"], checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    restore_rng(checkpoint["rng"])
    return checkpoint["step"], checkpoint["history"], checkpoint.get("best")


def plan(model, procs, cfg, data, total_steps):
    """The line that says what is about to be trained, where and how."""
    auto_bf16 = cfg["precision"] == "auto" and native_bf16(procs.device)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)  # whole counts under FSDP too
    return (f"training {n_params / 1e6:.1f}M parameters on {procs.device} x {procs.world} process(es)"
            f"{' (FSDP)' if procs.fsdp else ''} ({cfg['precision']}{': bf16 autocast' if auto_bf16 else ''}): "
            f"{len(data.task)} task examples + {data.per_epoch - len(data.task)} rehearsal texts "
            f"({cfg['rehearsal_loss']}) per epoch, "
            f"{cfg['epochs']} epochs, {total_steps} steps")


def epoch_batches(data, cfg, seed, epoch):
    """The epoch's global batches (lists of records), in the epoch's own seeded order."""
    # Each epoch shuffles with its own seeded generator: the order is reproducible, and a
    # resumed run can skip exactly the batches it had done.
    # Every process draws the same global batches; each trains on its own rows (Processes.own_rows).
    shuffle = torch.Generator().manual_seed(seed + epoch)
    records = epoch_examples(data.task, data.rehearsal, cfg["rehearsal_ratio"], seed, epoch)
    if cfg["group_by_length"]:  # shuffled, then sorted by length within groups of 50 batches: less padding
        order = LengthGroupedSampler(cfg["batch_size"], lengths=[len(r["input_ids"]) for r in records],
                                     generator=shuffle)
    else:
        order = RandomSampler(records, generator=shuffle)
    # The loader draws a seed from `shuffle` before the sampler does: passing it keeps the
    # order of DataLoader(shuffle=True, generator=shuffle), the order of the committed runs.
    return DataLoader(records, batch_size=cfg["batch_size"], sampler=order, collate_fn=list, generator=shuffle)


def train_one_step(model, optimizer, scheduler, autocast, global_batch, tokenizer, cfg, procs):
    """One optimizer step on this process's rows of the global batch. Returns (the whole batch's
    mean loss, the learning rate of the step, the gradient norm before clipping).
    With rehearsal_loss = kl the rehearsal rows are distilled from their stored teacher distributions,
    in the same forward pass as the task rows."""
    rows = procs.own_rows(global_batch)
    batch = collate_packed(rows) if cfg["packing"] else collate(rows, tokenizer.pad_token_id)
    batch = {k: v.to(procs.device) for k, v in batch.items()}
    teacher = batch_teacher(rows, procs.device) if any("teacher" in r for r in rows) else None
    lr = scheduler.get_last_lr()[0]
    loss, grad_norm = train_step(model, batch, optimizer, scheduler, cfg["max_grad_norm"], autocast,
                                 procs.loss_divisor(global_batch), teacher)
    return procs.mean(loss), lr, grad_norm


def dev_answer_loss(model, dev, batch_size, pad_id, device):
    """Mean teacher-forced NLL of the dev answers (nats/token): are the facts generalising?"""
    model.eval()
    _, total, count = answer_nll(model, dev, batch_size, pad_id, device)
    model.train()
    return total / count


def checkpoint_due(cfg, step, seconds_since_last, procs):
    """Whether to save a checkpoint after this step: finetune.checkpoint_minutes of training have
    passed since the last one (or the start), or the step is a multiple of finetune.checkpoint_every.
    By time, saving stays a small share of a run (a ~1.6 GB save takes 3–6 s here) on a slow CPU and a
    fast GPU alike; by steps it is every few seconds on a GPU and every few minutes on this CPU."""
    by_steps = bool(cfg["checkpoint_every"]) and step % cfg["checkpoint_every"] == 0
    if by_steps or not cfg["checkpoint_minutes"]:
        return by_steps
    # The first process's clock decides for all: they must save at the same step.
    return procs.agree(seconds_since_last >= 60 * cfg["checkpoint_minutes"])


def write_checkpoint(procs, model, optimizer, scheduler, fingerprint, step, history, best):
    """Everything needed to resume exactly (training.save_checkpoint): gathered by every process,
    written by the main one."""
    model_state, optimizer_state = gather_training_state(model, optimizer)  # every process
    if procs.is_main:
        save_checkpoint(CHECKPOINT, fingerprint, step, history, model_state, optimizer_state, scheduler, best)
    del model_state, optimizer_state
    procs.wait()


class Log:
    """What the main process shows and records: DVCLive's curves and summary (metrics/finetune),
    the tqdm bar, and one fixed-format line every finetune.log_every steps. In the other processes
    it shows and records nothing."""

    def __init__(self, main_process, history, start_step, total_steps, log_every):
        self.main, self.total_steps, self.log_every = main_process, total_steps, log_every
        self.live = Live(dir=str(FINETUNE_LIVE), dvcyaml=None, save_dvc_exp=False) if main_process else None
        for logged in history if main_process else []:  # the steps before a crash, so the curves are whole
            log_step(self.live, *logged)
        # Real tokens and time since the last log line: the line shows the speed now, so a slowdown shows.
        self.real_tokens, self.started = 0, time.perf_counter()
        self.last_line = self.started
        self.progress = tqdm(total=total_steps, initial=start_step, desc="finetune", unit="step",
                             disable=not main_process)

    def write(self, line):
        if self.main:
            self.progress.write(line)

    def step(self, step, epoch, global_batch, loss, lr, grad_norm, dev_nll):
        self.real_tokens += sum(len(r["input_ids"]) for r in global_batch)  # padding is not work done
        if self.main:
            log_step(self.live, loss, lr, dev_nll)
        self.progress.update()
        if step % self.log_every == 0 or step == self.total_steps:
            now = time.perf_counter()
            self.write(f"step {step:05d}/{self.total_steps:05d} ({100 * step / self.total_steps:5.1f}%) | "
                       f"epoch {epoch:3d} | loss {loss:.4f} | lr {lr:.2e} | grad_norm {grad_norm:7.3f} | "
                       f"real tok/s {self.real_tokens / (now - self.last_line):7.1f} | elapsed {self.elapsed():6.1f}s")
            self.real_tokens, self.last_line = 0, now

    def elapsed(self):
        return time.perf_counter() - self.started

    def close(self):
        self.progress.close()

    def end(self, kept_epoch=None, kept_nll=None):
        """Write DVCLive's files. At the end of training its summary (metrics.json) says which epoch
        was kept: with kept_nll, the one of the lowest dev answer loss; without, the last."""
        if not self.main:
            return
        if kept_epoch is not None:
            self.live.summary["kept_epoch"] = kept_epoch
            self.live.summary["kept_by"] = "last epoch" if kept_nll is None else "lowest dev answer loss"
            if kept_nll is not None:
                self.live.summary["kept_dev_answer_nll"] = round(kept_nll, 4)
        self.live.end()


def log_step(live, loss, lr, dev_nll):
    live.log_metric("train/loss", loss)
    live.log_metric("train/lr", lr)
    if dev_nll is not None:
        live.log_metric("dev/answer_nll", dev_nll)
    live.next_step()


if __name__ == "__main__":
    try:
        main()
    except (ParamsError, TrainingError) as e:  # the library raises; the stage says why and exits non-zero
        sys.exit(f"error: {e}")
