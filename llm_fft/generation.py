"""Batched greedy answering, shared by both evaluations, interpolate, ask and the benchmark."""

import torch


@torch.inference_mode()
def answer_questions(model, tokenizer, records, batch_size, max_new_tokens, device, stop=None, stop_texts=()):
    """Greedy answers to every record's prompt (its q_ids), in the records' order.

    Prompts are sorted by length so each batch pads little, left-padded so every prompt ends where
    generation starts, and given an explicit attention mask: pad == EOS, so it cannot be inferred.
    `stop`: token ids that end an answer (default: EOS); `stop_texts` (data.stop_texts): text that
    ends it too, cut off with whatever follows. Returns one dict per record: text, generated_tokens
    (up to the stop token, a stop text's tokens included), ended_with_eos (ended by a stop token: not
    by the length limit, nor cut at a stop text; did the model learn to stop?).
    """
    stop = stop or [tokenizer.eos_token_id]
    stop_strings = {"stop_strings": list(stop_texts), "tokenizer": tokenizer} if stop_texts else {}
    order = sorted(range(len(records)), key=lambda i: len(records[i]["q_ids"]))
    answers = [None] * len(records)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = tokenizer.pad({"input_ids": [records[i]["q_ids"] for i in rows]},
                              padding_side="left", return_tensors="pt").to(device)
        output = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id, eos_token_id=stop, **stop_strings)
        # Slice by input length, not by decoded strings: the prompt is exactly the padded width.
        for i, new_ids in zip(rows, output[:, batch["input_ids"].shape[1]:].tolist()):
            # A row stopped at a stop text is padded after it, and pad == EOS: only `cut` tells.
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


def generation_limit(records, extra_new_tokens):
    """Max new tokens: the longest answer (with its end token) plus a margin. Derived from the data,
    since a fixed small limit would cut long Korean answers short (~2 tokens per syllable here)."""
    return max(len(r["input_ids"]) - len(r["q_ids"]) for r in records) + extra_new_tokens
