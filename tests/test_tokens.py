"""Prompt/answer boundary, labels, EOS, padding by position and left-padded batched generation,
on the embedded model's real tokenizer (pad == EOS there, the case that breaks id-based masking)."""

import torch

from llm_fft.data import IGNORE_INDEX, build_prompt, collate, tokenize_pair
from llm_fft.evaluation import answer_questions

PAIRS = [("별무리섬은 어느 바다에 있나요?", "별무리섬은 제주도 남쪽 바다에 있는 작은 섬입니다."),
         ("How tall is the lighthouse?", "27 metres."),
         ("등대지기는?", "윤가람")]


def test_pad_is_eos_in_the_embedded_tokenizer(embedded_tokenizer):
    # The rest of this file matters because of this: masking labels by pad id would drop EOS.
    assert embedded_tokenizer.pad_token_id == embedded_tokenizer.eos_token_id


def test_prompt_is_a_prefix_and_labels_supervise_answer_plus_eos(embedded_tokenizer):
    tok = embedded_tokenizer
    for question, answer in PAIRS:
        ids = tokenize_pair(tok, question, answer)
        n_prompt = len(ids["q_ids"])
        assert ids["input_ids"][:n_prompt] == ids["q_ids"]
        assert ids["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
        assert ids["input_ids"][-1] == tok.eos_token_id
        supervised = [t for t in ids["labels"] if t != IGNORE_INDEX]
        assert supervised == ids["input_ids"][n_prompt:]
        assert tok.decode(supervised) == answer + tok.eos_token
        assert tok.decode(ids["q_ids"]) == build_prompt(question)


def test_no_bos_is_doubled_and_none_sits_inside_the_answer(embedded_tokenizer):
    tok = embedded_tokenizer
    ids = tokenize_pair(tok, *PAIRS[0])
    assert ids["input_ids"].count(tok.bos_token_id) <= 1
    assert tok.eos_token_id not in ids["input_ids"][:-1]


def test_collate_masks_padding_by_position_and_keeps_the_real_eos(embedded_tokenizer):
    tok = embedded_tokenizer
    records = [tokenize_pair(tok, q, a) for q, a in PAIRS]
    batch = collate(records, pad_id=tok.pad_token_id)
    longest = max(len(r["input_ids"]) for r in records)
    assert batch["input_ids"].shape == (len(records), longest)  # padded to the batch, no further
    for row, r in enumerate(records):
        n = len(r["input_ids"])
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (longest - n)
        assert batch["labels"][row, :n].tolist() == r["labels"]
        assert batch["labels"][row, n:].eq(IGNORE_INDEX).all()
        # The supervised EOS survives although the padding after it is the same token id.
        assert batch["labels"][row, n - 1].item() == tok.eos_token_id
        assert batch["input_ids"][row, n:].eq(tok.eos_token_id).all()


def test_batched_left_padded_generation_equals_one_at_a_time(embedded_model, embedded_tokenizer):
    tok = embedded_tokenizer
    records = [tokenize_pair(tok, q, a) for q, a in PAIRS]
    assert len({len(r["q_ids"]) for r in records}) > 1  # lengths differ, so the batch is padded
    device = torch.device("cpu")
    batched = answer_questions(embedded_model, tok, records, batch_size=3, max_new_tokens=12, device=device)
    single = [answer_questions(embedded_model, tok, [r], batch_size=1, max_new_tokens=12, device=device)[0]
              for r in records]
    assert batched == single
    assert all(a["generated_tokens"] <= 12 for a in batched)
