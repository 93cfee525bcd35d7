"""Stage finetune: train every weight of the base model on the answers (full fine-tuning).

    python stages/finetune.py

Reads finetune.*, model.dtype, seed and device in params.yaml, data/qa.jsonl and models/base.
Writes models/finetuned (save_pretrained: model and tokenizer) and, through DVCLive,
metrics/finetune/ (loss and learning rate per step for `dvc plots show`, summary metrics.json).
Every finetune.checkpoint_every steps it saves a checkpoint to models/checkpoints/finetune/ (not a
DVC output, so it survives a crash); the next run resumes from it and deletes it when done.
"""

import math
import shutil
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # python stages/x.py: import llm_fft from the repo

import torch
from dvclive import Live
from torch.utils.data import DataLoader
from tqdm import tqdm
from transformers import get_scheduler

from llm_fft.data import collate, read_jsonl
from llm_fft.model import DTYPES, load_pretrained, save_model
from llm_fft.params import (fail_if_problems, load_params, pick_device, problems_in_section,
                            seed_everything, shared_problems)
from llm_fft.training import (PRECISIONS, autocast_for, load_checkpoint, restore_rng, run_fingerprint,
                              save_checkpoint, train_step)

BASE_MODEL = Path("models/base")
RECORDS = Path("data/qa.jsonl")
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
}


def main():
    params = load_params()
    problems = shared_problems(params) + problems_in_section(params, "finetune", SPEC)
    if params.get("model", {}).get("dtype") not in DTYPES:
        problems.append(f"params.yaml: model.dtype must be one of {', '.join(DTYPES)}")
    fail_if_problems(problems)
    cfg = params["finetune"]
    records = read_jsonl(RECORDS)
    if cfg["batch_size"] > len(records):
        print(f"warning: finetune.batch_size {cfg['batch_size']} > {len(records)} examples: "
              f"every batch is the whole dataset")
    # A checkpoint of another run is refused before any model is loaded.
    fingerprint = run_fingerprint(params, RECORDS, BASE_MODEL)
    resumed = load_checkpoint(CHECKPOINT, fingerprint)
    seed_everything(params["seed"])
    device = pick_device(params["device"])

    # fp32 master weights whatever the dtype on disk; autocast (if any) only lowers the matmuls.
    model, tokenizer = load_pretrained(BASE_MODEL, torch.float32, device)
    model.config.use_cache = False  # the KV cache only helps generation
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"],
                                  fused=device.type == "cuda")
    steps_per_epoch = math.ceil(len(records) / cfg["batch_size"])
    total_steps = cfg["epochs"] * steps_per_epoch
    scheduler = get_scheduler(cfg["lr_schedule"], optimizer, num_warmup_steps=cfg["warmup_steps"],
                              num_training_steps=total_steps)
    start_step, history = 0, []  # history: (loss, lr) of every step done, replayed into DVCLive
    if resumed:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        restore_rng(resumed["rng"])
        start_step, history = resumed["step"], resumed["history"]
        del resumed  # a second copy of the weights and optimizer state
        print(f"resuming from {CHECKPOINT} at step {start_step}/{total_steps}")
    autocast = autocast_for(device, cfg["precision"])
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"training {n_params / 1e6:.1f}M parameters on {device} ({cfg['precision']}): "
          f"{len(records)} examples, {cfg['epochs']} epochs, {total_steps} steps")

    live = Live(dir=str(LIVE_DIR), dvcyaml=None, save_dvc_exp=False)
    for loss, lr in history:  # the steps before a crash, so the curve is whole
        live.log_metric("train/loss", loss)
        live.log_metric("train/lr", lr)
        live.next_step()
    step, real_tokens, started = start_step, 0, time.perf_counter()
    progress = tqdm(total=total_steps, initial=start_step, desc="finetune", unit="step")
    for epoch in range(1, cfg["epochs"] + 1):
        # Each epoch shuffles with its own seeded generator: the order is reproducible, and a
        # resumed run can skip exactly the batches it had done.
        loader = DataLoader(records, batch_size=cfg["batch_size"], shuffle=True,
                            generator=torch.Generator().manual_seed(params["seed"] + epoch),
                            collate_fn=partial(collate, pad_id=tokenizer.pad_token_id))
        for batch_index, batch in enumerate(loader):
            if (epoch - 1) * steps_per_epoch + batch_index < start_step:
                continue  # done before the crash
            step += 1
            real_tokens += int(batch["attention_mask"].sum())  # padding is not work done
            batch = {k: v.to(device) for k, v in batch.items()}
            lr = scheduler.get_last_lr()[0]
            loss, grad_norm = train_step(model, batch, optimizer, scheduler, cfg["max_grad_norm"], autocast)
            if not math.isfinite(loss):
                live.end()
                sys.exit(f"error: loss is {loss} at step {step} (epoch {epoch}); no model saved. "
                         f"Try a lower finetune.lr (now {cfg['lr']}).")
            history.append((loss, lr))
            live.log_metric("train/loss", loss)
            live.log_metric("train/lr", lr)
            live.next_step()
            progress.update()
            if step % cfg["log_every"] == 0 or step == total_steps:
                elapsed = time.perf_counter() - started
                progress.write(f"step {step:05d}/{total_steps:05d} ({100 * step / total_steps:5.1f}%) | "
                               f"epoch {epoch:3d} | loss {loss:.4f} | lr {lr:.2e} | grad_norm {grad_norm:7.3f} | "
                               f"real tok/s {real_tokens / elapsed:7.1f} | elapsed {elapsed:6.1f}s")
            if cfg["checkpoint_every"] and step % cfg["checkpoint_every"] == 0 and step < total_steps:
                save_checkpoint(CHECKPOINT, fingerprint, step, history, model, optimizer, scheduler)
    progress.close()
    live.end()

    save_model(model, tokenizer, OUT_DIR, DTYPES[params["model"]["dtype"]])
    shutil.rmtree(CHECKPOINT.parent, ignore_errors=True)  # finished: nothing left to resume
    print(f"wrote {OUT_DIR} after {step} steps in {time.perf_counter() - started:.0f}s; last loss {loss:.4f}")


if __name__ == "__main__":
    main()
