"""Teacher-forced answer loss: finetune's dev loss and the evaluations' answer NLL use this one function."""

import torch
import torch.nn.functional as F

from llm_fft.batching import IGNORE_INDEX, collate


@torch.inference_mode()
def answer_nll(model, records, batch_size, pad_id, device):
    """Teacher-forced negative log-likelihood of each record's supervised tokens, in nats/token.

    Returns (per-record mean NLL, total NLL, number of supervised tokens) so the dataset mean can
    be the global token mean, not a mean of per-record means.
    """
    per_record, total, count = [], 0.0, 0
    for start in range(0, len(records), batch_size):
        batch = {k: v.to(device) for k, v in collate(records[start:start + batch_size], pad_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        # Position t predicts token t+1.
        labels = batch["labels"][:, 1:]
        nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels,
                              ignore_index=IGNORE_INDEX, reduction="none")
        supervised = labels != IGNORE_INDEX
        for row_nll, row_mask in zip(nll, supervised):
            per_record.append(row_nll[row_mask].mean().item())
        total += nll[supervised].sum().item()
        count += int(supervised.sum())
    return per_record, total, count
