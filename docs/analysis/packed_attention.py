"""finetune's own step with attention run example by example in a packed row, against transformers'
`sdpa` with its block mask (docs/benchmarks.md, "Where a step's time goes").

    PYTHONPATH=. python docs/analysis/packed_attention.py sdpa          # stages/ is not an installed package
    PYTHONPATH=. python docs/analysis/packed_attention.py packed_sdpa

Run each from the repository root after `dvc repro teacher_distributions`, one at a time with nothing
else running. Trains 32 steps of epoch 1 (the params.yaml finetune section, seed 123) from models/base
and prints the real tokens/s of the last 30 and the first losses.
"""

import sys
import time

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from llm_fft.params import load_params
from llm_fft.training import Processes, autocast_for
from stages.finetune import epoch_batches, load_data, set_up, train_one_step


def packed_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, position_ids=None, **kwargs):
    """Causal SDPA over each example of a packed row (its position_ids restart at 0), GQA inside SDPA."""
    if query.shape[0] != 1 or position_ids is None:
        raise ValueError("packed_sdpa takes one packed row with its position_ids")
    starts = (position_ids[0] == 0).nonzero().squeeze(1).tolist() + [query.shape[2]]
    outs = [F.scaled_dot_product_attention(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], is_causal=True,
                                           scale=scaling, enable_gqa=True) for s, e in zip(starts, starts[1:])]
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def main():
    AttentionInterface.register("packed_sdpa", packed_sdpa)
    AttentionMaskInterface.register("packed_sdpa", lambda *args, **kwargs: None)  # causality is per example
    implementation = sys.argv[1]
    cfg = load_params()["finetune"]
    procs = Processes(torch.device("cpu"), False)
    data = load_data(cfg, 123)
    model, tokenizer, optimizer, scheduler = set_up(cfg, procs, 1000)
    model.set_attn_implementation(implementation)
    autocast = autocast_for(procs.device, cfg["precision"])
    batches = list(epoch_batches(data, cfg, 123, 1))
    losses = [train_one_step(model, optimizer, scheduler, autocast, b, tokenizer, cfg, procs)[0] for b in batches[:2]]
    started, tokens = time.perf_counter(), 0
    for b in batches[2:32]:
        losses.append(train_one_step(model, optimizer, scheduler, autocast, b, tokenizer, cfg, procs)[0])
        tokens += sum(len(r["input_ids"]) for r in b)
    seconds = time.perf_counter() - started
    print(f"{implementation}: 30 steps {seconds:.1f} s, {tokens / seconds:.1f} real tok/s; "
          f"first losses {', '.join(f'{loss:.4f}' for loss in losses[:3])}")


if __name__ == "__main__":
    main()
