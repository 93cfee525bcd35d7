"""The optimisation step and the checkpoints of stages/finetune.py (the step is kept here so a
benchmark can time the same code)."""

import contextlib
import hashlib
import json
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

PRECISIONS = ("auto", "fp32", "bf16-autocast")


def autocast_for(device, precision):
    """bf16 autocast over fp32 master weights, or plain fp32.

    Weights and AdamW state stay fp32 either way: in pure bf16 (8 mantissa bits) an update of
    lr 1e-5 on a weight of ~1e-2 rounds to nothing. 'auto' = bf16 autocast on CUDA, fp32 on CPU,
    where bf16 matmuls are not faster on most processors.
    """
    if precision == "bf16-autocast" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(model, batch, optimizer, scheduler, max_grad_norm, autocast):
    """One optimizer step on one batch; returns (loss, gradient norm before clipping) as floats.

    The model shifts labels inside forward and averages over supervised tokens only (-100 skipped).
    """
    with autocast:
        loss = model(**batch).loss
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item(), grad_norm.item()


# --- Checkpoints: resume after a crash ---------------------------------------------------------

def run_fingerprint(params, records_path, base_model_dir):
    """What a checkpoint must match to be resumed: the training params and the exact inputs.

    Knobs that change no numbers (log_every, checkpoint_every) are left out.
    """
    cfg = {k: v for k, v in params["finetune"].items() if k not in ("log_every", "checkpoint_every")}
    base = Path(base_model_dir)
    return {
        **{f"finetune.{k}": v for k, v in sorted(cfg.items())},
        "seed": params["seed"],
        "records": hashlib.sha256(Path(records_path).read_bytes()).hexdigest(),
        # config + file sizes tell base models apart without hashing gigabytes of weights.
        "base_model": hashlib.sha256(((base / "config.json").read_text(encoding="utf-8") + json.dumps(
            sorted((p.name, p.stat().st_size) for p in base.iterdir()))).encode()).hexdigest(),
    }


def save_checkpoint(path, fingerprint, step, history, model, optimizer, scheduler):
    """Everything needed to continue exactly: weights, optimizer, scheduler, RNG states, loss history."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np_state = np.random.get_state()
    state = {
        "fingerprint": fingerprint, "step": step, "history": history,
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "rng": {"python": random.getstate(), "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                # as plain lists: weights_only loading refuses NumPy objects
                "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a kill during torch.save leaves the previous checkpoint intact


def load_checkpoint(path, fingerprint):
    """The checkpoint's state, or None if there is none. Exits if it belongs to another run."""
    path = Path(path)
    if not path.is_file():
        return None
    # weights_only: tensors and plain containers only, nothing that runs code when loaded.
    state = torch.load(path, map_location="cpu", weights_only=True)
    changed = [k for k in fingerprint.keys() | state["fingerprint"].keys()
               if fingerprint.get(k) != state["fingerprint"].get(k)]
    if changed:
        sys.exit(f"error: {path} was saved by a run with other params or data (differs in: "
                 f"{', '.join(sorted(changed))}); refusing to resume it. Delete it to start over: "
                 f"rm -r {path.parent}")
    return state


def restore_rng(rng):
    random.setstate(rng["python"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"]:
        torch.cuda.set_rng_state_all(rng["cuda"])
    name, keys, *rest = rng["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
