"""Teacher-forced answer loss: finetune's dev loss and the evaluations' answer NLL use answer_nll, and
it and training's loss use supervised_logits, which runs the output head only where a token is learned."""

import torch
import torch.nn.functional as F
from torch.distributed.fsdp import FSDPModule

from llm_fft.batching import IGNORE_INDEX, collate


def answer_nll(model, records, batch_size, pad_id, device, known=None):
    """Teacher-forced negative log-likelihood of each record's supervised tokens, in nats/token.

    Returns (per-record mean NLL, total NLL, number of supervised tokens) so the dataset mean can
    be the global token mean, not a mean of per-record means. known: see record_nlls.
    """
    return summed(record_nlls(model, records, batch_size, pad_id, device, known))


def summed(nlls):
    """answer_nll's (per-record mean, total, tokens) from record_nlls' (summed NLL, tokens) pairs."""
    return ([total / count if count else float("nan") for total, count in nlls],
            sum(total for total, _ in nlls), sum(count for _, count in nlls))


def nll_key(record):
    """What a record's NLL depends on: its tokens and which of them are supervised (all that collate
    reads of a record; a field it came to read would have to join the key)."""
    return tuple(record["input_ids"]), tuple(record["labels"])


@torch.inference_mode()
def record_nlls(model, records, batch_size, pad_id, device, known=None):
    """(summed NLL, supervised tokens) of each record, teacher-forced, in the records' order.

    A record found in known ({nll_key: (summed NLL, tokens)}, from an earlier call on the same model)
    or repeated among records is not run again: a model's answer that is the expected one costs
    nothing more. The rest run in batches of records of similar length, so each pads little, with the
    output head only where a token is supervised (supervised_logits): the prompt is about half of
    every record.
    """
    found = dict(known or {})
    todo = sorted({nll_key(r): r for r in records if nll_key(r) not in found}.items(),
                  key=lambda item: len(item[1]["input_ids"]))
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate([r for _, r in chunk], pad_id).items()}
        logits, targets = supervised_logits(model, batch)
        nll = F.cross_entropy(logits.float(), targets, reduction="none")  # supervised tokens, row by row
        for (key, _), row in zip(chunk, nll.split((batch["labels"][:, 1:] != IGNORE_INDEX).sum(1).tolist())):
            found[key] = (row.sum().item(), len(row))
    return [found[nll_key(r)] for r in records]


# Architectures whose *ForCausalLM.forward computes logits = lm_head(last hidden state), with at
# most Gemma's final_logit_softcapping on top (checked in transformers 5.23's modeling files).
# Others (Cohere's logit_scale, Granite's logits_scaling, ...) transform the logits in their own
# way, so they keep model(**batch).loss: slower here, never wrong.
PLAIN_HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"})


def plain_head(model):
    """Whether the output head can be run on chosen positions only (see PLAIN_HEAD_MODEL_TYPES).

    A model wrapped for DDP or sharded by FSDP (finetune.processes > 1) must be called whole: the
    wrapper's forward (DDP) and the root's hooks (FSDP) arrange the gradient all-reduce and the
    gathering of the embeddings and head."""
    return (not isinstance(model, FSDPModule) and hasattr(model, "get_decoder")
            and getattr(model.config, "model_type", None) in PLAIN_HEAD_MODEL_TYPES
            and model.get_decoder() is not model
            and isinstance(model.get_output_embeddings(), torch.nn.Linear))


def supervised_logits(model, batch):
    """(logits, targets) at the positions that predict a supervised token, row by row.

    model(**batch) projects every position onto the whole vocabulary (49152 rows for SmolLM2,
    128256 for kanana), then drops most of it: the prompt (~55% of the tokens here) and the padding
    have label -100. Where plain_head allows, the decoder runs as usual and the output head sees only
    the positions that predict a supervised token; otherwise the whole model runs and the rest is dropped.
    The batch holds input_ids and labels (unshifted, as for model(**batch)).
    """
    # The hidden state at position t predicts the token at t + 1 (the shift model(**batch) does
    # inside forward): pair hidden[:, :-1] with labels[:, 1:].
    targets = batch["labels"][:, 1:]
    supervised = targets != IGNORE_INDEX
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if not plain_head(model):
        return model(**inputs, use_cache=False).logits[:, :-1][supervised], targets[supervised]
    hidden = model.get_decoder()(**inputs, use_cache=False).last_hidden_state
    logits = model.get_output_embeddings()(hidden[:, :-1][supervised])  # (supervised tokens, vocab)
    softcap = getattr(model.config, "final_logit_softcapping", None)
    if softcap:  # Gemma 2/3 squash their logits; the standard loss sees them squashed
        logits = torch.tanh(logits / softcap) * softcap
    return logits, targets[supervised]
