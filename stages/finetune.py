"""Stage finetune: train every weight of the base model on the answers (full fine-tuning).

    python stages/finetune.py

Reads finetune.*, model.dtype, seed and device in params.yaml, data/qa.jsonl (the question/answer
pairs), data/statements_qa.jsonl (the facts as plain text), data/rehearsal.jsonl (the base model's own
text; finetune.rehearsal_ratio of it is mixed into every epoch), data/dev_qa.jsonl and models/base.
It never reads the held-out questions: they only report. Writes models/finetuned (save_pretrained:
model and tokenizer; the last epoch's weights, or with finetune.select_epoch best_dev_loss the epoch
whose dev answer loss was lowest) and, through DVCLive, metrics/finetune/ (loss and learning rate per
step, and the dev answer loss at the end of each epoch, for `dvc plots show`; summary metrics.json
with the epoch kept). The dev loss is teacher-forced: no generation inside training.
Every finetune.checkpoint_every steps it saves a checkpoint to models/checkpoints/finetune/ (not a
DVC output, so it survives a crash); the next run resumes from it and deletes it when done.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # python stages/x.py: import llm_fft from the repo

import torch
from accelerate import Accelerator
from dvclive import Live
from torch.utils.data import DataLoader, RandomSampler
from tqdm import tqdm
from transformers import get_scheduler
from transformers.trainer_pt_utils import LengthGroupedSampler

from llm_fft.data import IGNORE_INDEX, collate, collate_packed, read_jsonl
from llm_fft.evaluation import answer_nll
from llm_fft.model import DTYPES, load_pretrained, save_model
from llm_fft.params import (fail_if_problems, load_params, pick_device, problems_in_section,
                            seed_everything, shared_problems)
from llm_fft.training import (PRECISIONS, autocast_for, epoch_examples, native_bf16, gather_training_state, gather_weights, load_checkpoint,
                              make_optimizer, master_dtype, restore_rng, restore_training_state, run_fingerprint,
                              save_checkpoint, shard, snapshot_weights, speed_up, train_step)

BASE_MODEL = Path("models/base")
RECORDS = Path("data/qa.jsonl")
STATEMENT_RECORDS = Path("data/statements_qa.jsonl")
REHEARSAL_RECORDS = Path("data/rehearsal.jsonl")
DEV_RECORDS = Path("data/dev_qa.jsonl")
OUT_DIR = Path("models/finetuned")
LIVE_DIR = Path("metrics/finetune")
CHECKPOINT = Path("models/checkpoints/finetune/checkpoint.pt")
SCHEDULES = ("linear", "cosine", "constant_with_warmup")
SPEC = {
    "lr": (float, lambda v: 0 < v < 1, "a float in (0, 1)"),
    "epochs": (int, lambda v: v >= 1, "an integer >= 1"),
    "batch_size": (int, lambda v: v >= 1, "an integer >= 1"),
    "weight_decay": ((int, float), lambda v: v >= 0, "a number >= 0"),
    "warmup_steps": (int, lambda v: v >= 0, "an integer >= 0 (optimizer steps)"),
    "lr_schedule": (str, lambda v: v in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
    "max_grad_norm": ((int, float), lambda v: v > 0, "a number > 0"),
    "precision": (str, lambda v: v in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
    "log_every": (int, lambda v: v >= 1, "an integer >= 1 (optimizer steps)"),
    "checkpoint_every": (int, lambda v: v >= 0, "an integer >= 0 (optimizer steps; 0 = never)"),
    "processes": (int, lambda v: v >= 1, "an integer >= 1 (1 = no DDP; N = one per GPU)"),
    "fsdp": (bool, None, "true or false"),
    "group_by_length": (bool, None, "true or false"),
    "packing": (bool, None, "true or false"),
    "gradient_checkpointing": (bool, None, "true or false"),
    "compile": (bool, None, "true or false"),
    "rehearsal_ratio": ((int, float), lambda v: v >= 0, "a number >= 0 (rehearsal texts per task example)"),
    "select_epoch": (str, lambda v: v in ("last", "best_dev_loss"), "last or best_dev_loss"),
}
ACCELERATE_CONFIG = Path("configs/accelerate.yaml")


def log_step(live, loss, lr, dev_nll):
    live.log_metric("train/loss", loss)
    live.log_metric("train/lr", lr)
    if dev_nll is not None:
        live.log_metric("dev/answer_nll", dev_nll)
    live.next_step()


def dev_answer_loss(model, dev, batch_size, pad_id, device):
    """Mean teacher-forced NLL of the dev answers (nats/token): are the facts generalising?"""
    model.eval()
    _, total, count = answer_nll(model, dev, batch_size, pad_id, device)
    model.train()
    return total / count


def main():
    params = load_params()
    problems = shared_problems(params) + problems_in_section(params, "finetune", SPEC)
    if params.get("model", {}).get("dtype") not in DTYPES:
        problems.append(f"params.yaml: model.dtype must be one of {', '.join(DTYPES)}")
    cfg = params.get("finetune") or {}
    if cfg.get("fsdp") is True and cfg.get("processes") == 1:
        problems.append("params.yaml: finetune.fsdp shards the model over processes: set finetune.processes > 1")
    fail_if_problems(problems)
    if cfg["processes"] > 1 and "WORLD_SIZE" not in os.environ:
        # Start finetune.processes copies of this stage under accelerate (DDP, or FSDP); this one waits.
        sys.exit(subprocess.call([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                                  str(ACCELERATE_CONFIG), "--num_processes", str(cfg["processes"]), __file__]))
    # The task: the question/answer pairs and the facts as plain text. Rehearsal is added per epoch.
    task = read_jsonl(RECORDS) + read_jsonl(STATEMENT_RECORDS)
    rehearsal = read_jsonl(REHEARSAL_RECORDS) if cfg["rehearsal_ratio"] else []
    dev = read_jsonl(DEV_RECORDS)
    if cfg["select_epoch"] == "best_dev_loss" and not dev:
        sys.exit(f"error: finetune.select_epoch = best_dev_loss needs dev questions, and {DEV_RECORDS} has none "
                 "(add dev phrasings to the facts file, or set finetune.select_epoch: last)")
    examples_per_epoch = len(epoch_examples(task, rehearsal, cfg["rehearsal_ratio"], params["seed"], 1))
    if cfg["batch_size"] > examples_per_epoch:
        print(f"warning: finetune.batch_size {cfg['batch_size']} > {examples_per_epoch} examples: "
              f"every batch is the whole dataset")
    # A checkpoint of another run is refused before any model is loaded.
    fingerprint = run_fingerprint(params, RECORDS, BASE_MODEL)
    for name, path in (("statements", STATEMENT_RECORDS), ("rehearsal", REHEARSAL_RECORDS), ("dev", DEV_RECORDS)):
        fingerprint[name] = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None
    resumed = load_checkpoint(CHECKPOINT, fingerprint)
    seed_everything(params["seed"])
    # One process, or one per GPU (CPU process) when started by `accelerate launch` (dvc.yaml's cmd,
    # finetune.processes): DDP, each process taking its share of every global batch.
    accelerator = Accelerator(cpu=pick_device(params["device"]).type == "cpu")
    device, world, rank = accelerator.device, accelerator.num_processes, accelerator.process_index
    main_process = accelerator.is_main_process
    if cfg["batch_size"] % world:
        sys.exit(f"error: finetune.batch_size {cfg['batch_size']} must be a multiple of the {world} processes")

    # fp32 master weights whatever the dtype on disk (unless bf16-pure); autocast only lowers the matmuls.
    # FSDP: every process reads the whole model into CPU memory, and keeps only its shard on the device.
    keep_best = cfg["select_epoch"] == "best_dev_loss"
    model, tokenizer = load_pretrained(BASE_MODEL, master_dtype(cfg["precision"]), "cpu" if cfg["fsdp"] else device)
    model.config.use_cache = False  # the KV cache only helps generation
    model = speed_up(model, cfg["gradient_checkpointing"], cfg["compile"])
    if cfg["fsdp"]:
        model = shard(model, device)
    model.train()
    optimizer = make_optimizer(model, cfg["lr"], cfg["weight_decay"])
    steps_per_epoch = math.ceil(examples_per_epoch / cfg["batch_size"])
    total_steps = cfg["epochs"] * steps_per_epoch
    scheduler = get_scheduler(cfg["lr_schedule"], optimizer, num_warmup_steps=cfg["warmup_steps"],
                              num_training_steps=total_steps)
    # history: (loss, lr, dev answer loss or None) of every step done, replayed into DVCLive.
    # best: (epoch, dev loss, whole weights on the CPU) of the lowest dev loss so far (best_dev_loss).
    start_step, history, best = 0, [], None
    if resumed:
        restore_training_state(model, optimizer, resumed["model"], resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        restore_rng(resumed["rng"])
        start_step, history, best = resumed["step"], resumed["history"], resumed.get("best")
        del resumed  # a second copy of the weights and optimizer state
        if main_process:
            print(f"resuming from {CHECKPOINT} at step {start_step}/{total_steps}")
    # DDP (world > 1, no FSDP) averages the gradients of the processes in backward; FSDP does it
    # itself. The optimizer and scheduler are not prepared: they step once per step, as in one process.
    if not cfg["fsdp"]:
        model = accelerator.prepare(model)
    autocast = autocast_for(device, cfg["precision"])
    auto_bf16 = cfg["precision"] == "auto" and native_bf16(device)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)  # whole counts under FSDP too
    if main_process:
        print(f"training {n_params / 1e6:.1f}M parameters on {device} x {world} process(es)"
              f"{' (FSDP)' if cfg['fsdp'] else ''} ({cfg['precision']}{': bf16 autocast' if auto_bf16 else ''}): "
              f"{len(task)} task examples + {examples_per_epoch - len(task)} rehearsal texts per epoch, "
              f"{cfg['epochs']} epochs, {total_steps} steps")

    # Only the main process logs and writes; the others train.
    live = Live(dir=str(LIVE_DIR), dvcyaml=None, save_dvc_exp=False) if main_process else None
    for logged in history if main_process else []:  # the steps before a crash, so the curves are whole
        log_step(live, *logged)
    step, real_tokens, started = start_step, 0, time.perf_counter()
    progress = tqdm(total=total_steps, initial=start_step, desc="finetune", unit="step", disable=not main_process)
    for epoch in range(1, cfg["epochs"] + 1):
        # Each epoch shuffles with its own seeded generator: the order is reproducible, and a
        # resumed run can skip exactly the batches it had done.
        # Every process draws the same global batches; process r trains on rows r, r+world, ...
        shuffle = torch.Generator().manual_seed(params["seed"] + epoch)
        records = epoch_examples(task, rehearsal, cfg["rehearsal_ratio"], params["seed"], epoch)
        if cfg["group_by_length"]:  # shuffled, then sorted by length within groups of 50 batches: less padding
            order = LengthGroupedSampler(cfg["batch_size"], lengths=[len(r["input_ids"]) for r in records],
                                         generator=shuffle)
        else:
            order = RandomSampler(records, generator=shuffle)
        # The loader draws a seed from `shuffle` before the sampler does: passing it keeps the
        # order of DataLoader(shuffle=True, generator=shuffle), the order of the committed runs.
        loader = DataLoader(records, batch_size=cfg["batch_size"], sampler=order, collate_fn=list,
                            generator=shuffle)
        for batch_index, global_batch in enumerate(loader):
            if (epoch - 1) * steps_per_epoch + batch_index < start_step:
                continue  # done before the crash
            step += 1
            real_tokens += sum(len(r["input_ids"]) for r in global_batch)  # padding is not work done
            # A process left without an example (the epoch's last batch may be short) trains on a
            # copy of one with no label: it must take part in the gradient all-reduce, adding nothing.
            rows = global_batch[rank::world] or [{**global_batch[0],
                                                  "labels": [IGNORE_INDEX] * len(global_batch[0]["labels"])}]
            batch = collate_packed(rows) if cfg["packing"] else collate(rows, tokenizer.pad_token_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            num_items = None
            if world > 1:
                # Each process sums its answer-token losses and divides by the whole batch's count
                # over world: the mean of the processes' gradients is then exactly the gradient of the
                # whole batch's mean loss, as one process would compute it (the first label is never
                # supervised: it predicts nothing).
                num_items = sum(label != IGNORE_INDEX for r in global_batch for label in r["labels"][1:]) / world
            lr = scheduler.get_last_lr()[0]
            loss, grad_norm = train_step(model, batch, optimizer, scheduler, cfg["max_grad_norm"], autocast, num_items)
            if world > 1:  # the logged loss: the whole batch's mean, from the processes' parts
                loss = accelerator.reduce(torch.tensor(loss, device=device), "mean").item()
            if not math.isfinite(loss):
                if live:
                    live.end()
                sys.exit(f"error: loss is {loss} at step {step} (epoch {epoch}); no model saved. "
                         f"Try a lower finetune.lr (now {cfg['lr']}).")
            dev_nll = None
            # At the end of each epoch, in the main process; under FSDP in every process, since each
            # forward needs all of them; when keeping the best epoch, in every process too, so they
            # all decide alike.
            end_of_epoch = batch_index == steps_per_epoch - 1
            if dev and end_of_epoch and (main_process or cfg["fsdp"] or keep_best):
                dev_nll = dev_answer_loss(accelerator.unwrap_model(model), dev, cfg["batch_size"],
                                          tokenizer.pad_token_id, device)
                if main_process:
                    progress.write(f"epoch {epoch:3d} done | dev answer loss {dev_nll:.4f}")
                if keep_best and (best is None or dev_nll < best[1]):
                    best = None  # free the old copy before gathering the new one
                    best = (epoch, dev_nll, snapshot_weights(model))  # a whole CPU copy (FSDP: in the first process)
            history.append((loss, lr, dev_nll))
            if live:
                log_step(live, loss, lr, dev_nll)
            progress.update()
            if main_process and (step % cfg["log_every"] == 0 or step == total_steps):
                elapsed = time.perf_counter() - started
                progress.write(f"step {step:05d}/{total_steps:05d} ({100 * step / total_steps:5.1f}%) | "
                               f"epoch {epoch:3d} | loss {loss:.4f} | lr {lr:.2e} | grad_norm {grad_norm:7.3f} | "
                               f"real tok/s {real_tokens / elapsed:7.1f} | elapsed {elapsed:6.1f}s")
            if cfg["checkpoint_every"] and step % cfg["checkpoint_every"] == 0 and step < total_steps:
                model_state, optimizer_state = gather_training_state(model, optimizer)  # every process
                if main_process:
                    save_checkpoint(CHECKPOINT, fingerprint, step, history, model_state, optimizer_state, scheduler,
                                    best)
                del model_state, optimizer_state
                accelerator.wait_for_everyone()
    progress.close()
    kept_epoch = best[0] if keep_best else cfg["epochs"]
    if keep_best:
        weights = best[2]
    else:
        weights = gather_weights(model) if cfg["fsdp"] else None  # every process: each holds a shard
    if main_process:
        live.summary["kept_epoch"] = kept_epoch
        live.summary["kept_by"] = "lowest dev answer loss" if keep_best else "last epoch"
        if keep_best:
            live.summary["kept_dev_answer_nll"] = round(best[1], 4)
        live.end()
        save_model(accelerator.unwrap_model(model), tokenizer, OUT_DIR, DTYPES[params["model"]["dtype"]], weights)
        shutil.rmtree(CHECKPOINT.parent, ignore_errors=True)  # finished: nothing left to resume
        print(f"wrote {OUT_DIR} (epoch {kept_epoch} of {cfg['epochs']}, {'lowest dev answer loss' if keep_best else 'the last'}) "
              f"after {step} steps in {time.perf_counter() - started:.0f}s; last loss {loss:.4f}")
    # The processes leave together, their process group closed: one that exited with it open while
    # the main process was still saving aborted now and then in gloo's teardown (measured: 1 run in
    # 20 of 2-process FSDP, "terminate called without an active exception").
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main()
