"""Batched greedy answering, and the one decoding protocol of both evaluations, interpolate, ask and
the benchmark."""

import inspect
import weakref
from dataclasses import dataclass

import torch
from transformers import DynamicCache, StoppingCriteriaList, StopStringCriteria

from llm_fft.files import read_jsonl
from llm_fft.paths import DEV_QA, TRAINED_QA
from llm_fft.prompts import stop_ids, stop_texts


@torch.inference_mode()
def answer_questions(model, tokenizer, records, batch_size, max_new_tokens, device, stop=None, stop_texts=()):
    """Greedy answers to every record's prompt (its q_ids), in the records' order.

    Prompts are sorted by length so each batch pads little, left-padded so every prompt ends where
    generation starts, and given an explicit attention mask: pad == EOS, so it cannot be inferred.
    `stop`: token ids that end an answer (default: EOS); `stop_texts` (prompts.stop_texts): text that
    ends it too, cut off with whatever follows. Returns one dict per record: text, generated_tokens
    (up to the stop token, a stop text's tokens included), ended_with_eos (ended by a stop token: not
    by the length limit, nor cut at a stop text; did the model learn to stop?).
    """
    stop = stop or [tokenizer.eos_token_id]
    stop_criteria = stop_text_criteria(tokenizer, tuple(stop_texts)) if stop_texts else None
    order = sorted(range(len(records)), key=lambda i: len(records[i]["q_ids"]))
    answers = [None] * len(records)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = tokenizer.pad({"input_ids": [records[i]["q_ids"] for i in rows]},
                              padding_side="left", return_tensors="pt").to(device)
        for i, new_ids in zip(rows, greedy_new_tokens(model, batch["input_ids"], batch["attention_mask"],
                                                       max_new_tokens, stop, stop_criteria)):
            end = next((n for n, t in enumerate(new_ids) if t in stop), None)
            new_ids = new_ids if end is None else new_ids[:end]
            text, cut = tokenizer.decode(new_ids, skip_special_tokens=True), None
            if stop_texts:  # searched with special tokens kept: the markers may be ones (prompt.markers)
                raw = tokenizer.decode(new_ids, skip_special_tokens=False)
                cut = min((raw.find(t) for t in stop_texts if t in raw), default=None)
                if cut is not None:
                    text = raw[:cut]
                    for special in tokenizer.all_special_tokens:
                        text = text.replace(special, "")
            answers[i] = {"text": text.strip(), "generated_tokens": len(new_ids),
                          "ended_with_eos": end is not None and cut is None}
    return answers


@torch.inference_mode()
def greedy_new_tokens(model, input_ids, attention_mask, max_new_tokens, stop, stop_criteria=None):
    """Each row's greedy new tokens, up to and including the stop token (a token of stop) or the token
    that completes a stop text (stop_criteria), at most max_new_tokens. input_ids: left-padded prompts.

    What model.generate(do_sample=False) computes, one step per token with a KV cache, except that
    rows that have ended leave the batch: generate runs every row until the last one ends (in the
    default run's final_eval, 1.7 times the row-steps its answers need). In fp32 a row's tokens do
    not depend on the rows beside it (docs/benchmarks.md), so the answers stay the same; in bf16 a
    near-tie can go the other way, as it can with another batch size. Plain greedy decoding for every
    model alike: a model's generation_config (repetition penalty, ...) is not applied.
    """
    new_tokens = [[] for _ in range(len(input_ids))]
    rows = list(range(len(input_ids)))  # which prompt each row of the batch is
    ended = torch.zeros(len(input_ids), dtype=torch.bool, device=input_ids.device)
    stop = torch.tensor(stop, device=input_ids.device)
    sequences = input_ids
    # Positions count real tokens only, as generate counts them: a left-padded prompt starts at 0.
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    # Only the last position's logits are needed (generate asks the same of a model that supports it).
    last_only = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   past_key_values=cache, use_cache=True, **last_only).logits
    for step in range(max_new_tokens):
        next_ids = logits[:, -1].float().argmax(-1)
        for row, token, done in zip(rows, next_ids.tolist(), ended.tolist()):
            if not done:
                new_tokens[row].append(token)
        sequences = torch.cat([sequences, next_ids[:, None]], dim=1)
        ended |= torch.isin(next_ids, stop)
        if stop_criteria is not None:
            ended |= stop_criteria(sequences, None)
        if ended.all() or step == max_new_tokens - 1:
            break
        # Dropping rows copies the whole cache, so ended rows wait until they are a quarter of the batch.
        if ended.sum() * 4 >= len(rows):
            keep = (~ended).nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows = [rows[i] for i in keep.tolist()]
            sequences, attention_mask, position_ids, next_ids, ended = (
                t[keep] for t in (sequences, attention_mask, position_ids, next_ids, ended))
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(rows), 1)], dim=1)
        position_ids = position_ids[:, -1:] + 1
        logits = model(input_ids=next_ids[:, None], attention_mask=attention_mask, position_ids=position_ids,
                       past_key_values=cache, use_cache=True, **last_only).logits
    return new_tokens


# Per tokenizer: {stop texts: criteria}. generate(stop_strings=...) builds the criteria from the whole
# vocabulary on every call (~0.45 s for SmolLM2's 49152 tokens on 2 cores, per batch), and its own cache
# misses because a fast tokenizer's get_vocab() comes back in another order each time.
_STOP_TEXT_CRITERIA = weakref.WeakKeyDictionary()


def stop_text_criteria(tokenizer, stop_texts):
    """generate()'s criteria that end a row at any of stop_texts, built once per tokenizer."""
    built = _STOP_TEXT_CRITERIA.setdefault(tokenizer, {})
    if stop_texts not in built:
        built[stop_texts] = StoppingCriteriaList([StopStringCriteria(tokenizer, list(stop_texts))])
    return built[stop_texts]


def generation_limit(records, extra_new_tokens):
    """Max new tokens: the longest answer (with its end token) plus a margin. Derived from the data,
    since a fixed small limit would cut long Korean answers short (~2 tokens per syllable here)."""
    return max(len(r["input_ids"]) - len(r["q_ids"]) for r in records) + extra_new_tokens


@dataclass(frozen=True)
class Decoding:
    """How a question is answered: greedily, batch_size at a time, at most max_new_tokens, ended by a
    stop token or cut at a stop text. One protocol, so baseline and final answers compare."""
    max_new_tokens: int
    stop_ids: tuple
    stop_texts: tuple
    batch_size: int

    def answer(self, model, tokenizer, records, device):
        return answer_questions(model, tokenizer, records, self.batch_size, self.max_new_tokens, device,
                                list(self.stop_ids), self.stop_texts)


def decoding(tokenizer, prompt, evaluate, limit_records=None):
    """The decoding protocol for a prompt style and the evaluate section of params.yaml. The limit comes
    from the questions that choose (limit_records, else data/trained_qa.jsonl and data/dev_qa.jsonl):
    dev and held-out questions ask for the trained answers, and unknown ones get the room a real answer
    gets, no more. Trained refusals are taught, not asked. Raises PromptError for a chat template this
    pipeline cannot split at the answer."""
    if limit_records is None:
        limit_records = [r for r in read_jsonl(TRAINED_QA) if not r.get("refusal")] + (
            read_jsonl(DEV_QA) if DEV_QA.exists() else [])
    return Decoding(generation_limit(limit_records, evaluate["extra_new_tokens"]), tuple(stop_ids(tokenizer, prompt)),
                    tuple(stop_texts(prompt)), evaluate["batch_size"])

