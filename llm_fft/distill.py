"""The base model's next-token distributions over the rehearsal texts, stored once, and the KL that
finetune.rehearsal_loss kl learns them by.

The teacher is the frozen base model and the rehearsal texts are a fixed DVC output, so its
distributions are the same in every epoch and every run: stage teacher_distributions computes them
once, keeping at each position the rehearsal.teacher_top_k most likely tokens and the log of the
probability left over. finetune then needs no second copy of the model and no teacher forward pass.
The KL is taken over k + 1 outcomes, those k tokens and "any other token"; with k = the vocabulary
it is the full KL (tests/test_training.py checks both).
"""

import torch
from safetensors.torch import load_file, save_file

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
    k = min(k, model.get_output_embeddings().out_features)
    # Empty first parts, so that no records (no rehearsal) make an empty file, not an error.
    parts = {"token_ids": [torch.empty(0, k, dtype=torch.int32)], "logprobs": [torch.empty(0, k)],
             "rest_logprob": [torch.empty(0)], "positions": [torch.empty(0, dtype=torch.long)]}
    for start in range(0, len(records), batch_size):
        batch = {key: v.to(device) for key, v in collate(records[start:start + batch_size], pad_id).items()}
        supervised = supervised_mask(batch["labels"])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       use_cache=False).logits[:, :-1][supervised].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        top = logprobs.topk(k, dim=-1)
        rest = logprobs.scatter(-1, top.indices, float("-inf")).logsumexp(-1)
        parts["token_ids"].append(top.indices.int().cpu())
        parts["logprobs"].append(top.values.cpu())
        parts["rest_logprob"].append(rest.cpu())
        parts["positions"].append(supervised.sum(1).cpu())
    return {name: torch.cat(tensors) for name, tensors in parts.items()}


def save_teacher(path, teacher):
    save_file({name: t.contiguous() for name, t in teacher.items()}, str(path))


def load_teacher(path, records):
    """Each record's rows of the stored distributions, as (token_ids, logprobs, rest_logprob).
    Raises ValueError when the file was computed for other records."""
    teacher = load_file(str(path))
    counts = teacher["positions"].tolist()
    expected = [int(supervised_mask(torch.tensor([r["labels"]])).sum()) for r in records]
    if counts != expected:
        raise ValueError(f"{path} holds the distributions of other texts ({len(counts)} texts, "
                         f"{sum(counts)} positions; expected {len(expected)}, {sum(expected)}): run "
                         "`dvc repro teacher_distributions` (or python -m stages.teacher_distributions)")
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
            parts.append([t[:supervised] for t in r["teacher"]])
        distilled += [bool(supervised) and "teacher" in r] * supervised
    return (*(torch.cat(tensors).to(device) for tensors in zip(*parts)), torch.tensor(distilled, device=device))


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
        kl = kl + (teacher_rest.exp() * (teacher_rest - model_rest)).sum()
    return kl

