"""The optimisation step, the processes and the checkpoints of stages/finetune.py (the step is kept
here so a benchmark can time the same code)."""

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
from accelerate import Accelerator
from accelerate.utils import broadcast
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from llm_fft.batching import IGNORE_INDEX
from llm_fft.distill import stored_kl
from llm_fft.nll import plain_head, supervised_logits
from llm_fft.params import native_bf16

PRECISIONS = ("auto", "fp32", "bf16-autocast", "bf16-pure")
SCHEDULES = ("linear", "cosine", "constant_with_warmup")
REHEARSAL_LOSSES = ("ce", "kl")
# The finetune section of params.yaml (see llm_fft.params.problems_in_section); the benchmark checks
# the keys it trains with against the same rules.
FINETUNE_SPEC = {
    "lr": (float, lambda v: 0 < v < 1, "a float in (0, 1)"),
    "epochs": (int, lambda v: v >= 1, "an integer >= 1"),
    "batch_size": (int, lambda v: v >= 1, "an integer >= 1"),
    "weight_decay": ((int, float), lambda v: v >= 0, "a number >= 0"),
    "warmup_steps": (int, lambda v: v >= 0, "an integer >= 0 (optimizer steps)"),
    "lr_schedule": (str, lambda v: v in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
    "max_grad_norm": ((int, float), lambda v: v > 0, "a number > 0"),
    "precision": (str, lambda v: v in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
    "log_every": (int, lambda v: v >= 1, "an integer >= 1 (optimizer steps)"),
    "checkpoint_minutes": ((int, float), lambda v: v >= 0, "a number >= 0 (minutes of training; 0 = not by time)"),
    "checkpoint_every": (int, lambda v: v >= 0, "an integer >= 0 (optimizer steps; 0 = not by steps)"),
    "processes": (int, lambda v: v >= 1, "an integer >= 1 (1 = no DDP; N = one per GPU)"),
    "fsdp": (bool, None, "true or false"),
    "group_by_length": (bool, None, "true or false"),
    "packing": (bool, None, "true or false"),
    "gradient_checkpointing": (bool, None, "true or false"),
    "compile": (bool, None, "true or false"),
    "rehearsal_ratio": ((int, float), lambda v: v >= 0, "a number >= 0 (rehearsal texts per task example)"),
    "rehearsal_loss": (str, lambda v: v in REHEARSAL_LOSSES, f"one of {', '.join(REHEARSAL_LOSSES)}"),
    "select_epoch": (str, lambda v: v in ("last", "best_dev_loss"), "last or best_dev_loss"),
}

# finetune keys that change no numbers: dvc.yaml does not list them for finetune, so editing one reruns
# no stage but the seconds of check_params, and a checkpoint resumes across them.
CHANGES_NO_NUMBERS = ("log_every", "checkpoint_minutes", "checkpoint_every")

class TrainingError(ValueError):
    """A run that cannot start or go on; the message says why and what to do. The finetune stage
    prints it as `error: <message>` and exits non-zero."""


def autocast_for(device, precision):
    """bf16 autocast over fp32 master weights, or plain fp32 (or nothing to do: bf16-pure).

    'auto' = bf16 autocast where the device multiplies bf16 natively (CUDA; CPUs with AVX-512 BF16
    or AMX), else fp32: elsewhere bf16 matmuls are emulated and slower. Weights and AdamW state stay
    fp32 in all of these; see master_dtype for bf16-pure.
    """
    if precision == "bf16-autocast" or (precision == "auto" and native_bf16(device)):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


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


class Processes:
    """The training processes as the finetune loop meets them. Everything that differs with
    finetune.processes > 1 happens here; with one process each method is the plain thing (wrap and
    unwrap change nothing, own_rows is the whole batch, mean is the loss itself, wait returns).

    N processes are N copies of the stage started by `accelerate launch`: DDP keeps the whole model
    in each and averages the gradients in backward; FSDP (finetune.fsdp) keeps 1/N of it in each.
    Every process draws the same global batches and trains on its own rows of them.
    """

    def __init__(self, device, fsdp):
        # One process, or one per GPU (CPU process) when started by `accelerate launch`.
        self.accelerator = Accelerator(cpu=device.type == "cpu")
        self.fsdp = fsdp
        self.device = self.accelerator.device
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        self.is_main = self.accelerator.is_main_process  # only it logs and writes; the others train

    @property
    def load_device(self):
        """Where to read the model: FSDP reads it whole into CPU memory in every process, and wrap
        keeps only this process's shard on the device."""
        return "cpu" if self.fsdp else self.device

    def wrap(self, model):
        """FSDP: shard the model. DDP: wrap it, so that backward averages the processes' gradients
        (FSDP does that itself). One process: nothing to do. The optimizer and scheduler are not
        wrapped: they step once per step, as in one process."""
        return shard(model, self.device) if self.fsdp else self.accelerator.prepare(model)

    def unwrap(self, model):
        """The model out of DDP's wrapper (an FSDP model is sharded in place: nothing to take off)."""
        return self.accelerator.unwrap_model(model)

    def own_rows(self, global_batch):
        """This process's rows of the global batch: rank, rank + world, ...

        A process left without an example (the epoch's last batch may be short) trains on a copy of
        one with no label: it must take part in the gradient all-reduce, adding nothing."""
        return global_batch[self.rank::self.world] or self.unlabelled(global_batch)

    def unlabelled(self, rows):
        """[a copy of the first of rows with no label] in several processes, [] in one process or
        when there is none: a forward pass that takes part in the collectives and adds nothing."""
        first = next(iter(rows), None)
        if self.world == 1 or first is None:
            return []
        return [{**first, "labels": [IGNORE_INDEX] * len(first["labels"])}]

    def loss_divisor(self, global_batch):
        """train_step's num_items: None in one process (its batch's own mean).

        Each process sums its answer-token losses and divides by the whole batch's count over
        world: the mean of the processes' gradients is then exactly the gradient of the whole
        batch's mean loss, as one process would compute it (the first label is never supervised:
        it predicts nothing)."""
        if self.world == 1:
            return None
        return sum(label != IGNORE_INDEX for r in global_batch for label in r["labels"][1:]) / self.world

    def mean(self, loss):
        """The loss to log: the whole batch's mean, from the processes' parts."""
        if self.world == 1:
            return loss
        return self.accelerator.reduce(torch.tensor(loss, device=self.device), "mean").item()

    def computes_dev_loss(self, keep_best):
        """Whether this process computes the dev loss: the main process does; under FSDP every
        process, since each forward needs all of them; when keeping the best epoch every process
        too, so they all decide alike."""
        return self.is_main or self.fsdp or keep_best

    def whole_weights(self, model):
        """The last weights, for save_model: None where the model holds them whole (one process,
        DDP); under FSDP gathered from the shards (every process calls it, only the first receives them)."""
        return gather_weights(model) if self.fsdp else None

    def agree(self, flag):
        """The main process's flag, in every process (a collective: all must call it). For decisions
        taken on a clock, which the processes read at slightly different times: they save together."""
        if self.world == 1:
            return flag
        return bool(broadcast(torch.tensor([int(flag)], device=self.device), from_process=0).item())

    def wait(self):
        self.accelerator.wait_for_everyone()

    def end(self):
        """The processes leave together, once the main one has written everything. Several then exit
        at once (os._exit), without closing the process group or Python's own teardown: gloo aborted
        now and then in those ("terminate called without an active exception", SIGABRT, after the model
        was written: 1 run in 20 of the 2-process FSDP test when a process left without waiting, and
        twice in CI since they waited and closed the group; pytorch/pytorch PR 179291 describes it).
        Nothing is left to do by then: outputs are written and closed, the log flushed here."""
        self.accelerator.wait_for_everyone()
        if self.world == 1:
            self.accelerator.end_training()
            return
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


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


def train_step(model, batch, optimizer, scheduler, max_grad_norm, autocast, num_items=None, teacher=None):
    """One optimizer step on one batch; returns (loss, gradient norm before clipping) as floats.

    The loss is the mean cross-entropy over supervised tokens (-100 skipped), as model(**batch).loss,
    computed by supervised_token_loss where the architecture allows it (it skips unsupervised work);
    num_items: the sum is divided by it instead of by the batch's own supervised tokens.
    teacher: for finetune.rehearsal_loss = kl, the stored distributions of the batch's rehearsal rows
    (distill.batch_teacher): their positions are learned by distillation_loss instead, in the same
    forward pass and under the same divisor, so the loss stays a mean over every supervised token.
    """
    with autocast:
        if teacher is None:
            loss = supervised_token_loss(model, batch, num_items)
        else:
            loss = distillation_loss(model, batch, teacher, num_items)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item(), grad_norm.item()


def supervised_token_loss(model, batch, num_items=None):
    """model(**batch).loss, without computing logits where no token is learned (supervised_logits).

    The same mean over supervised tokens; with num_items, the sum over supervised tokens divided by
    num_items (transformers' num_items_in_batch). Models without a plain head take the standard loss.
    """
    if not plain_head(model):
        return model(**batch, **({} if num_items is None else {"num_items_in_batch": num_items})).loss
    logits, targets = supervised_logits(model, batch)
    # fp32 cross-entropy, as transformers' loss does under bf16 autocast.
    if num_items is None:
        return F.cross_entropy(logits.float(), targets)
    return F.cross_entropy(logits.float(), targets, reduction="sum") / num_items


def supervised_positions(batch):
    """How many positions of the batch predict a supervised token (the first label predicts nothing)."""
    return (batch["labels"][:, 1:] != IGNORE_INDEX).sum().item()


def distillation_loss(model, batch, teacher, num_items=None):
    """Cross-entropy at the task rows' supervised positions and KL(teacher || model) at the rehearsal
    rows' (finetune.rehearsal_loss = kl), summed and divided by num_items (default: the batch's
    supervised positions). teacher: distill.batch_teacher of the batch's rows, the base model's stored
    distributions and which positions they are for. One forward pass for both kinds of row.

    Cross-entropy on the base model's sampled rehearsal text teaches those sampled tokens, and a few
    hundred texts seen every epoch are soon learned by heart. The KL teaches, at every position, the
    distribution the base model had there, which is what its answers to everything else come from
    (self-distillation; Hinton et al. 2015, Li & Hoiem's "Learning without Forgetting" 2016).
    """
    *stored, distilled = teacher
    logits, targets = supervised_logits(model, batch)  # padding is masked by position
    task = ~distilled
    # fp32, as the cross-entropy alone is under bf16 autocast.
    loss = F.cross_entropy(logits[task].float(), targets[task], reduction="sum") + stored_kl(logits[distilled], *stored)
    return loss / (num_items or len(targets))


# --- Checkpoints: resume after a crash ---------------------------------------------------------

def run_fingerprint(params, records_path, base_model_dir):
    """What a checkpoint must match to be resumed: the training params and the exact inputs.

    Knobs that change no numbers (CHANGES_NO_NUMBERS) are left out.
    """
    cfg = {k: v for k, v in params["finetune"].items() if k not in CHANGES_NO_NUMBERS}
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
    """The checkpoint's state, or None if there is none. Raises TrainingError if it belongs to
    another run."""
    path = Path(path)
    if not path.is_file():
        return None
    # weights_only: tensors and plain containers only, nothing that runs code when loaded.
    state = torch.load(path, map_location="cpu", weights_only=True)
    changed = [k for k in fingerprint.keys() | state["fingerprint"].keys()
               if fingerprint.get(k) != state["fingerprint"].get(k)]
    if changed:
        raise TrainingError(f"{path} was saved by a run with other params or data (differs in: "
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
