"""Batching tokenized examples for training and teacher-forced scoring: padding, masks, packing."""

import torch
from transformers import DataCollatorWithFlattening

IGNORE_INDEX = -100  # label value that the loss skips (torch cross_entropy's ignore_index)


def collate(records, pad_id):
    """Right-pad one batch to its own longest example (dynamic padding).

    Padding is masked by position, never by token id: pad == EOS here, and the real EOS at the end
    of each answer must stay supervised.
    """
    longest = max(len(r["input_ids"]) for r in records)
    input_ids = torch.full((len(records), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(records), longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(records), longest), dtype=torch.long)
    for row, r in enumerate(records):
        n = len(r["input_ids"])
        input_ids[row, :n] = torch.tensor(r["input_ids"])
        labels[row, :n] = torch.tensor(r["labels"])
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def collate_packed(records):
    """The whole batch as one row, examples end to end, with no padding at all (finetune.packing).

    position_ids restart at 0 with each example and there is no attention_mask: that is how
    transformers tells the examples apart, and its attention masks (SDPA, eager; FlashAttention's
    variable-length kernels) keep every token from attending to another example, provided the model
    runs without a KV cache (finetune sets use_cache = False; with a cache transformers does not look
    for packed examples and reads the row as one sequence). The first label
    of each example is -100, so no example learns to predict the next one's first token.
    """
    flatten = DataCollatorWithFlattening(return_tensors="pt")
    return flatten([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in records])
