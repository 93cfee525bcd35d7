"""The optimisation step and the checkpoints of stages/finetune.py (the step is kept here so a
benchmark can time the same code)."""

import contextlib
import hashlib
import json
import math
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard

from llm_fft.data import IGNORE_INDEX

PRECISIONS = ("auto", "fp32", "bf16-autocast", "bf16-pure")


def autocast_for(device, precision):
    """bf16 autocast over fp32 master weights, or plain fp32 (or nothing to do: bf16-pure).

    'auto' = bf16 autocast where the device multiplies bf16 natively (CUDA; CPUs with AVX-512 BF16
    or AMX), else fp32: elsewhere bf16 matmuls are emulated and slower. Weights and AdamW state stay
    fp32 in all of these; see master_dtype for bf16-pure.
    """
    if precision == "bf16-autocast" or (precision == "auto" and native_bf16(device)):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def native_bf16(device):
    """Whether the device multiplies bf16 matrices in hardware: CUDA, or a CPU with AVX-512 BF16 or AMX."""
    if device.type == "cuda":
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8").split()
    except OSError:  # not Linux: assume not
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def master_dtype(precision):
    """The dtype of the weights AdamW updates: fp32, except in the opt-in bf16-pure mode.

    bf16-pure halves the memory of weights, gradients and AdamW state (16 -> 8 bytes per
    parameter), but bf16 keeps 8 mantissa bits: an update smaller than ~1/256 of a weight rounds
    away (lr 1e-5 on a weight of ~1e-2 changes nothing), so small learning rates may not train.
    """
    return torch.bfloat16 if precision == "bf16-pure" else torch.float32


def speed_up(model, gradient_checkpointing, compile_decoder):
    """The two opt-in trade-offs of finetune (params of the same names), applied before training."""
    if gradient_checkpointing:
        # Keep only each layer's input and recompute its activations in backward: about a third
        # more compute, for activation memory of one layer instead of all (long rows, big models).
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if compile_decoder:
        # torch.compile fuses the decoder's small kernels: faster steps on a GPU after a compile of
        # tens of seconds to minutes, and a recompile for new shapes (dynamic padding gives many;
        # torch marks them dynamic after the first). Rarely worth it on a small CPU run.
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
        decoder.compile()
    return model


def shard(model, device):
    """FSDP2 (finetune.fsdp): each process keeps 1/N of every weight, gradient and AdamW state.

    Each decoder layer is one unit, gathered whole just before it runs and freed after; the rest
    (embeddings, final norm, head) is one more: the split accelerate's FSDP plugin makes from
    transformers' _no_split_modules. Called directly rather than through that plugin, which does
    nothing for CPU processes: this way the path the CPU test proves is the one that runs on GPUs.
    Moves each unit's shard to `device`, so the model can be read into CPU memory first.
    """
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    for module in model.modules():
        if type(module).__name__ in (model._no_split_modules or []):
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def epoch_examples(task, rehearsal, ratio, seed, epoch):
    """What one epoch trains on: every task example (pairs and statements), and round(ratio x their
    number) rehearsal texts, a different seeded draw each epoch (the whole pool, in turn, if it is short)."""
    wanted = round(ratio * len(task)) if rehearsal else 0
    draw = torch.Generator().manual_seed(seed * 1000 + epoch)
    picks = torch.cat([torch.randperm(len(rehearsal), generator=draw)
                       for _ in range(math.ceil(wanted / len(rehearsal)))]).tolist() if wanted else []
    return task + [rehearsal[i] for i in picks[:wanted]]


def make_optimizer(model, lr, weight_decay):
    """AdamW over every weight, fused: one kernel for all tensors instead of a loop over them.

    Measured on the embedded model, 2 idle CPU cores, gradient clipping included: 0.14 s per step
    fused, 0.44 s in torch's default per-tensor loop on CPU, 0.73 s with foreach. On CUDA, fused is
    the fastest as well.
    """
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=True)


def train_step(model, batch, optimizer, scheduler, max_grad_norm, autocast, num_items=None):
    """One optimizer step on one batch; returns (loss, gradient norm before clipping) as floats.

    The loss is the mean cross-entropy over supervised tokens (-100 skipped), as model(**batch).loss,
    computed by supervised_token_loss where the architecture allows it (it skips unsupervised work);
    num_items: the sum is divided by it instead of by the batch's own supervised tokens.
    """
    with autocast:
        loss = supervised_token_loss(model, batch, num_items)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item(), grad_norm.item()


# Architectures whose *ForCausalLM.forward computes logits = lm_head(last hidden state), with at
# most Gemma's final_logit_softcapping on top (checked in transformers 5.23's modeling files).
# Others (Cohere's logit_scale, Granite's logits_scaling, ...) transform the logits in their own
# way, so they keep model(**batch).loss: slower here, never wrong.
PLAIN_HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"})


def supervised_token_loss(model, batch, num_items=None):
    """model(**batch).loss, without computing logits where no token is learned.

    model(**batch) projects every position onto the whole vocabulary (49152 rows for SmolLM2,
    128256 for kanana), then drops most of it: the prompt (~55% of the tokens here) and the padding
    have label -100. Here the decoder runs as usual, but the output head and the cross-entropy see
    only the positions that predict a supervised token. The result is the same mean over
    supervised tokens; the batch must hold input_ids and labels (unshifted, as for model(**batch)).
    With num_items, the sum over supervised tokens divided by num_items (transformers' num_items_in_batch).
    """
    # A model wrapped for DDP or sharded by FSDP (finetune.processes > 1) must be called whole: the
    # wrapper's forward (DDP) and the root's hooks (FSDP) arrange the gradient all-reduce and the
    # gathering of the embeddings and head. Those, and other heads, take the standard loss.
    plain_head = (not isinstance(model, FSDPModule) and hasattr(model, "get_decoder")
                  and getattr(model.config, "model_type", None) in PLAIN_HEAD_MODEL_TYPES
                  and model.get_decoder() is not model
                  and isinstance(model.get_output_embeddings(), torch.nn.Linear))
    if not plain_head:
        return model(**batch, **({} if num_items is None else {"num_items_in_batch": num_items})).loss
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    # The hidden state at position t predicts the token at t + 1 (the shift model(**batch) does
    # inside forward): pair hidden[:, :-1] with labels[:, 1:].
    targets = batch["labels"][:, 1:]
    supervised = targets != IGNORE_INDEX
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    hidden = decoder(**inputs, use_cache=False).last_hidden_state
    logits = head(hidden[:, :-1][supervised])  # (supervised tokens, vocab)
    softcap = getattr(model.config, "final_logit_softcapping", None)
    if softcap:  # Gemma 2/3 squash their logits; the standard loss sees them squashed
        logits = torch.tanh(logits / softcap) * softcap
    # fp32 cross-entropy, as transformers' loss does under bf16 autocast.
    if num_items is None:
        return F.cross_entropy(logits.float(), targets[supervised])
    return F.cross_entropy(logits.float(), targets[supervised], reduction="sum") / num_items


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


# Whole tensors on the CPU, keyed by parameter name, for a plain, DDP or FSDP model alike.
FULL_STATE = StateDictOptions(full_state_dict=True, cpu_offload=True)


def gather_weights(model):
    """The weights as whole tensors. Under FSDP this gathers the shards: every process must call it,
    and only the first receives them (the others get an empty dict)."""
    return get_model_state_dict(model, options=FULL_STATE)


def snapshot_weights(model):
    """A copy of the weights that later training steps leave alone (the best epoch so far).

    gather_weights returns the live parameters themselves for a model on the CPU, not a copy."""
    return {name: tensor.clone() for name, tensor in gather_weights(model).items()}


def gather_training_state(model, optimizer):
    """(weights, AdamW state) for a checkpoint, gathered as gather_weights does."""
    return get_state_dict(model, optimizer, options=FULL_STATE)


def restore_training_state(model, optimizer, model_state, optimizer_state):
    """The inverse of gather_training_state: every process passes the whole state and keeps its part."""
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state,
                   options=StateDictOptions(full_state_dict=True))


def save_checkpoint(path, fingerprint, step, history, model_state, optimizer_state, scheduler, best=None):
    """Everything needed to continue exactly: weights, optimizer, scheduler, RNG states, loss history,
    and the best epoch so far (finetune.select_epoch best_dev_loss: epoch, dev loss, its weights).

    model_state and optimizer_state come from gather_training_state."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np_state = np.random.get_state()
    state = {
        "fingerprint": fingerprint, "step": step, "history": history, "best": best,
        "model": model_state, "optimizer": optimizer_state, "scheduler": scheduler.state_dict(),
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
