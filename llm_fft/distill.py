"""The base model's next-token distributions over the rehearsal texts, stored once, and the KL that
finetune.rehearsal_loss kl learns them by.

The teacher is the frozen base model and the rehearsal texts are a fixed DVC output, so its
distributions are the same in every epoch and every run: stage teacher_distributions computes them
once, keeping at each position the teacher_distributions.top_k most likely tokens and the log of the
probability left over. finetune then needs no second copy of the model and no teacher forward pass.
The KL is taken over k + 1 outcomes, those k tokens and "any other token"; with k = the vocabulary
it is the full KL (tests/test_training.py checks both).
"""

import hashlib
import json

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from llm_fft.batching import IGNORE_INDEX, collate


def supervised_mask(labels):
    """Which positions predict a supervised token: position t predicts labels[t + 1]."""
    return labels[:, 1:] != IGNORE_INDEX


@torch.inference_mode()
def teacher_top_k(model, records, k, batch_size, pad_id, device):
    """The model's distributions at every supervised position of every record, in order.

    k larger than the vocabulary keeps the whole vocabulary.
    Returns {token_ids: (positions, k) int32, logprobs: (positions, k) float32, rest_logprob:
    (positions,) float32, the log of the probability outside those k (-inf when k covers the
    vocabulary), positions: (records,) int64, how many rows belong to each record}.
    """
    parts = {"token_ids": [], "logprobs": [], "rest_logprob": [], "positions": []}
    for start in range(0, len(records), batch_size):
        batch = {key: v.to(device) for key, v in collate(records[start:start + batch_size], pad_id).items()}
        supervised = supervised_mask(batch["labels"])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       use_cache=False).logits[:, :-1][supervised].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        top = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
        rest = logprobs.scatter(-1, top.indices, float("-inf")).logsumexp(-1)
        parts["token_ids"].append(top.indices.int().cpu())
        parts["logprobs"].append(top.values.cpu())
        parts["rest_logprob"].append(rest.cpu())
        parts["positions"].append(supervised.sum(1).cpu())
    if not records:  # no rehearsal text: an empty file, not an error
        return {"token_ids": torch.empty(0, k, dtype=torch.int32), "logprobs": torch.empty(0, k),
                "rest_logprob": torch.empty(0), "positions": torch.empty(0, dtype=torch.long)}
    return {name: torch.cat(tensors) for name, tensors in parts.items()}


def texts_digest(records):
    """What the stored distributions were computed for: a hash of the records' tokens and labels."""
    digest = hashlib.sha256()
    for r in records:
        digest.update(json.dumps([r["input_ids"], r["labels"]]).encode())
    return digest.hexdigest()


def save_teacher(path, teacher, records):
    save_file({name: t.contiguous() for name, t in teacher.items()}, str(path),
              metadata={"texts_sha256": texts_digest(records)})


def load_teacher(path, records):
    """Each record's rows of the stored distributions, as (token_ids, logprobs, rest_logprob).
    Raises ValueError when the file is missing, unreadable, or was computed for other records."""
    rerun = "run `dvc repro teacher_distributions` (or python -m stages.teacher_distributions)"
    try:
        with safe_open(str(path), "pt") as stored:
            digest = (stored.metadata() or {}).get("texts_sha256")
            teacher = {name: stored.get_tensor(name) for name in ("token_ids", "logprobs", "rest_logprob", "positions")}
    except Exception as e:  # missing, truncated, an older layout: all say the same thing
        raise ValueError(f"{path} cannot be read ({type(e).__name__}: {e}): {rerun}") from e
    if digest != texts_digest(records):
        raise ValueError(f"{path} holds the distributions of other texts than {len(records)} rehearsal texts "
                         f"read now: {rerun}")
    counts = teacher["positions"].tolist()
    split = [torch.split(teacher[name], counts) for name in ("token_ids", "logprobs", "rest_logprob")]
    return list(zip(*split))


def batch_teacher(rows, device):
    """The stored distributions of a batch's rows, lined up with the batch's supervised positions (row
    by row, as supervised_mask selects them): (token_ids, logprobs, rest_logprob) of the distilled
    positions, and a bool per supervised position, True where it is distilled (a rehearsal row's).
    Other rows (the task's, and those without labels: Processes.unlabelled) add no teacher rows."""
    parts, distilled = [], []
    for r in rows:
        supervised = sum(label != IGNORE_INDEX for label in r["labels"][1:])
        if "teacher" in r:
            stored = len(r["teacher"][0])
            if supervised not in (0, stored):
                raise ValueError(f"a rehearsal row has {supervised} learned positions and {stored} stored teacher rows")
            parts.append([t[:supervised] for t in r["teacher"]])
        distilled += ["teacher" in r] * supervised
    return (*(torch.cat(tensors).to(device) for tensors in zip(*parts)),
            torch.tensor(distilled, dtype=torch.bool, device=device))


def stored_kl(logits, token_ids, teacher_logprobs, teacher_rest):
    """KL(teacher || model) summed over positions, over the k stored tokens and the rest.

    logits: the model's (positions, vocab) at the positions the teacher rows describe; token_ids,
    teacher_logprobs, teacher_rest: the stored rows of those positions (teacher_top_k). Computed in fp32 (as the cross-entropy is
    under bf16 autocast). The rest term is left out when k covers the vocabulary: there is no rest.
    """
    log_q = torch.log_softmax(logits.float(), dim=-1)
    token_ids = token_ids.long()
    kl = (teacher_logprobs.exp() * (teacher_logprobs - log_q.gather(-1, token_ids))).sum()
    if token_ids.shape[-1] < log_q.shape[-1]:
        model_rest = log_q.scatter(-1, token_ids, float("-inf")).logsumexp(-1)
        rest = teacher_rest.exp()  # xlogy: a rest of probability 0 (log -inf) adds 0, not nan
        kl = kl + (torch.special.xlogy(rest, rest) - rest * model_rest).sum()
    return kl

