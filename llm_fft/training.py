"""The optimisation step of stages/finetune.py (kept here so a benchmark can time the same code)."""

import contextlib

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
