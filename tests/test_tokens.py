"""Prompt/answer boundary, labels, the end token, BOS, padding by position and left-padded batched
generation, in every prompt style, on both embedded tokenizers: SmolLM2's (pad == EOS, the case that
breaks id-based masking; no BOS; ChatML) and Gemma 3's (BOS first, EOS 1, pad 0, no chat template)."""

import copy

import pytest
import torch

from llm_fft.batching import IGNORE_INDEX, collate
from llm_fft.generation import answer_questions, greedy_new_tokens, stop_text_criteria
from llm_fft.prompts import PROMPT_STYLES, PromptError, build_prompt, stop_ids, stop_texts, tokenize_pair

PAIRS = [("별무리섬은 어느 바다에 있나요?", "별무리섬은 제주도 남쪽 바다에 있는 작은 섬입니다."),
         ("How tall is the lighthouse?", "27 metres."),
         ("등대지기는?", "윤가람")]
STYLES = [{"style": style, "system": ""} for style in PROMPT_STYLES] + [{"style": "chat", "system": "짧게 답하세요."}]
# Llama-3's chat template (kanana-nano-2.1b-instruct uses this style): <|eot_id|> ends each turn.
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


@pytest.fixture(scope="module")
def llama3_style_tokenizer(embedded_tokenizer):
    """The embedded tokenizer given Llama-3's chat special tokens and template."""
    tok = copy.deepcopy(embedded_tokenizer)
    tok.add_special_tokens({"bos_token": "<|begin_of_text|>", "additional_special_tokens": [
        "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    tok.chat_template = LLAMA3_TEMPLATE
    return tok


def test_pad_is_eos_in_the_embedded_tokenizer(embedded_tokenizer):
    # The rest of this file matters because of this: masking labels by pad id would drop EOS.
    assert embedded_tokenizer.pad_token_id == embedded_tokenizer.eos_token_id


def without_bos(tok, ids):
    return ids[1:] if ids[:1] == [tok.bos_token_id] else ids


@pytest.mark.parametrize("prompt", STYLES, ids=lambda p: p["style"] + ("+system" if p["system"] else ""))
def test_prompt_is_a_prefix_and_labels_supervise_answer_plus_end_token(any_tokenizer, prompt):
    tok = any_tokenizer
    if prompt["style"] == "chat" and not tok.chat_template:  # Gemma 3 base: refused, never guessed
        with pytest.raises(PromptError, match="needs a tokenizer with a chat template"):
            tokenize_pair(tok, *PAIRS[0], prompt)
        return
    for question, answer in PAIRS:
        ids = tokenize_pair(tok, question, answer, prompt)
        n_prompt = len(ids["q_ids"])
        assert ids["input_ids"][:n_prompt] == ids["q_ids"]
        assert ids["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
        supervised = [t for t in ids["labels"] if t != IGNORE_INDEX]
        assert supervised == ids["input_ids"][n_prompt:]
        assert supervised[-1] in stop_ids(tok, prompt)  # the model learns to stop, once, at the end
        assert not set(stop_ids(tok, prompt)) & set(supervised[:-1])
        # SmolLM2's ChatML closes a turn with <|im_end|>, which is also its EOS.
        assert tok.decode(supervised) == (" " if prompt["style"] == "plain" else "") + answer + tok.eos_token
        # A BOS the tokenizer adds (Gemma) comes before the prompt; a chat template writes its own.
        q_ids = ids["q_ids"] if prompt["style"] == "chat" else without_bos(tok, ids["q_ids"])
        assert tok.decode(q_ids) == build_prompt(question, prompt, tok)


def test_gemma_sequences_start_with_one_bos_and_end_with_eos_not_pad(gemma_tokenizer):
    tok = gemma_tokenizer
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (2, 1, 0)
    for style in ("custom_tokens", "plain"):
        for question, answer in PAIRS:
            ids = tokenize_pair(tok, question, answer, {"style": style, "system": ""})
            assert ids["input_ids"][0] == tok.bos_token_id
            assert ids["input_ids"].count(tok.bos_token_id) == 1
            assert ids["labels"][-1] == tok.eos_token_id
            assert tok.pad_token_id not in ids["input_ids"]


def test_smollm2_sequences_have_no_bos(embedded_tokenizer):
    # SmolLM2 was pretrained without one; adding it would be a prompt the model never saw.
    ids = tokenize_pair(embedded_tokenizer, *PAIRS[0], {"style": "custom_tokens", "system": ""})
    assert embedded_tokenizer.decode(ids["q_ids"]).startswith("<|question|>")


def test_gemma_has_one_token_per_hangul_syllable_or_fewer(embedded_tokenizer, gemma_tokenizer):
    # Why the Korean profile exists: the same Korean answer in far fewer tokens.
    answer = PAIRS[0][1]
    syllables = sum("가" <= ch <= "힣" for ch in answer)
    gemma = len(gemma_tokenizer(answer, add_special_tokens=False)["input_ids"])
    smollm2 = len(embedded_tokenizer(answer, add_special_tokens=False)["input_ids"])
    assert gemma <= syllables < smollm2


def test_chat_prompt_is_the_templates_generation_prompt(embedded_tokenizer):
    prompt = {"style": "chat", "system": "짧게 답하세요."}
    text = build_prompt("등대지기는?", prompt, embedded_tokenizer)
    assert text == ("<|im_start|>system\n짧게 답하세요.<|im_end|>\n<|im_start|>user\n등대지기는?<|im_end|>\n"
                    "<|im_start|>assistant\n")


def test_chat_style_with_a_llama3_template_supervises_eot(llama3_style_tokenizer):
    tok = llama3_style_tokenizer
    prompt = {"style": "chat", "system": ""}
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    ids = tokenize_pair(tok, "등대지기는?", "윤가람입니다.", prompt)
    assert tok.decode(ids["q_ids"]) == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n등대지기는?"
                                        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    supervised = [t for t in ids["labels"] if t != IGNORE_INDEX]
    assert tok.decode(supervised) == "윤가람입니다.<|eot_id|>"
    assert supervised[-1] == eot
    assert stop_ids(tok, prompt) == sorted({tok.eos_token_id, eot})


def test_chat_style_refuses_a_tokenizer_without_chat_template(gemma_tokenizer):
    assert gemma_tokenizer.chat_template is None  # Gemma 3 270M base ships none
    for use in (tokenize_pair, lambda tok, q, a, prompt: stop_ids(tok, prompt)):
        with pytest.raises(PromptError, match="needs a tokenizer with a chat template"):
            use(gemma_tokenizer, "Q?", "A.", {"style": "chat", "system": ""})


def test_no_bos_is_doubled_and_none_sits_inside_the_answer(any_tokenizer):
    tok = any_tokenizer
    for question, answer in PAIRS:
        ids = tokenize_pair(tok, question, answer, {"style": "custom_tokens", "system": ""})
        assert ids["input_ids"].count(tok.bos_token_id) <= 1
        assert tok.eos_token_id not in ids["input_ids"][:-1]


def test_collate_masks_padding_by_position_and_keeps_the_real_eos(any_tokenizer):
    tok = any_tokenizer
    records = [tokenize_pair(tok, q, a, {"style": "custom_tokens", "system": ""}) for q, a in PAIRS]
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
        assert batch["input_ids"][row, n:].eq(tok.pad_token_id).all()


def test_batched_left_padded_generation_equals_one_at_a_time(embedded_model, embedded_tokenizer):
    tok = embedded_tokenizer
    records = [tokenize_pair(tok, q, a, {"style": "custom_tokens", "system": ""}) for q, a in PAIRS]
    assert len({len(r["q_ids"]) for r in records}) > 1  # lengths differ, so the batch is padded
    device = torch.device("cpu")
    batched = answer_questions(embedded_model, tok, records, batch_size=3, max_new_tokens=12, device=device)
    single = [answer_questions(embedded_model, tok, [r], batch_size=1, max_new_tokens=12, device=device)[0]
              for r in records]
    assert batched == single
    assert all(a["generated_tokens"] <= 12 for a in batched)


def test_an_answer_is_cut_where_the_model_starts_another_block(embedded_model, embedded_tokenizer):
    """custom_tokens style: generation stops at a marker, and the answer is what came before it,
    exactly the answer without the rule cut there (greedy decoding: stopping only truncates)."""
    tok, prompt, device = embedded_tokenizer, {"style": "custom_tokens", "system": ""}, torch.device("cpu")
    # The base model answers these with new blocks of markers (seen on SmolLM2-135M).
    records = [tokenize_pair(tok, q, "-", prompt) for q in ("별무리섬의 위치는 어디인가요?", "별무리섬은 어디에 있는 섬이에요?")]
    free = answer_questions(embedded_model, tok, records, batch_size=2, max_new_tokens=24, device=device)
    cut = answer_questions(embedded_model, tok, records, batch_size=2, max_new_tokens=24, device=device,
                           stop_texts=stop_texts(prompt))
    assert stop_texts(prompt) == ["<|question|>", "<|answer|>"] and stop_texts({"style": "plain"}) == []
    assert any("<|" in a["text"] for a in free)  # else this test proves nothing
    for f, c in zip(free, cut, strict=True):
        first = min((f["text"].find(m) for m in stop_texts(prompt) if m in f["text"]), default=len(f["text"]))
        assert c["text"] == f["text"][:first].strip()
        assert "<|" not in c["text"] and c["generated_tokens"] <= f["generated_tokens"]
        if first < len(f["text"]):  # cut at a marker: it did not end with EOS
            assert not c["ended_with_eos"] and c["generated_tokens"] < f["generated_tokens"]


def test_markers_as_special_tokens_are_one_id_each_and_never_in_the_answer(any_tokenizer):
    # prompt.markers = special_tokens: prepare_model adds them exactly like this.
    tok = copy.deepcopy(any_tokenizer)
    plain_ids = tokenize_pair(tok, *PAIRS[0], {"style": "custom_tokens", "system": ""})
    tok.add_tokens(["<|question|>", "<|answer|>"], special_tokens=True)
    question_id, answer_id = tok.convert_tokens_to_ids(["<|question|>", "<|answer|>"])
    ids = tokenize_pair(tok, *PAIRS[0], {"style": "custom_tokens", "system": ""})
    assert ids["q_ids"].count(question_id) == 1 and ids["q_ids"].count(answer_id) == 1
    assert len(ids["q_ids"]) < len(plain_ids["q_ids"])  # each marker was several text tokens
    assert ids["input_ids"][len(ids["q_ids"]):] == plain_ids["input_ids"][len(plain_ids["q_ids"]):]
    assert tok.decode(ids["q_ids"], skip_special_tokens=True) == f"\n{PAIRS[0][0]}\n\n"


@pytest.mark.parametrize("prompt", STYLES[:3], ids=lambda p: p["style"])
def test_unknown_questions_get_the_same_prompt_ids_and_nothing_to_learn(embedded_tokenizer, prompt):
    from stages.parse_qa import tokenize_questions
    question = "별무리섬의 면적은 몇 제곱킬로미터인가요?"
    records, too_long = tokenize_questions(embedded_tokenizer, [{"question": question}], prompt, 256,
                                           lambda i: f"data/unknown.jsonl:{i + 1}")
    # The prompt of a pair with the same question: no answer tokens, no labels, so no loss is taken.
    assert records == [{"id": 0, "question": question, "prompt": build_prompt(question, prompt, embedded_tokenizer),
                        "q_ids": tokenize_pair(embedded_tokenizer, question, "x", prompt)["q_ids"]}]
    assert too_long == []
    _, too_long = tokenize_questions(embedded_tokenizer, [{"question": question}], prompt, 8,
                                     lambda i: f"data/unknown.jsonl:{i + 1}")
    assert too_long[0].startswith("data/unknown.jsonl:1: prompt has ") and "parse_qa.max_length = 8" in too_long[0]


def generate_reference(model, batch, max_new_tokens, stop, **criteria):
    """model.generate's greedy new tokens per row, and the id it pads an ended row with: one that is
    no stop token, so a row that ended a token early or late cannot pass for padding."""
    pad_id = next(i for i in range(model.config.vocab_size) if i not in (stop or []))
    output = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                            pad_token_id=pad_id, eos_token_id=stop, **criteria)
    return output[:, batch["input_ids"].shape[1]:].tolist(), pad_id


def assert_generate_equal(ours, reference):
    """Each row of ours is generate's row up to where the row ended; generate pads the rest."""
    rows, pad_id = reference
    for mine, theirs in zip(ours, rows, strict=True):
        assert theirs == mine + [pad_id] * (len(theirs) - len(mine))


def test_greedy_new_tokens_are_generates_though_ended_rows_leave_the_batch(embedded_model, embedded_tokenizer):
    """The base model in custom_tokens style starts new marker blocks at different steps: rows end at a
    stop text or at EOS while others run to the limit, so rows leave the batch midway."""
    tok, prompt = embedded_tokenizer, {"style": "custom_tokens", "system": ""}
    questions = ["별무리섬의 위치는 어디인가요?", "별무리섬은 어디에 있는 섬이에요?", "How tall is the lighthouse?",
                 "등대지기는?", "What is the capital of France?", "별무리섬 최고봉의 이름은?"]
    records = [tokenize_pair(tok, q, "-", prompt) for q in questions]
    batch = tok.pad({"input_ids": [r["q_ids"] for r in records]}, padding_side="left", return_tensors="pt")
    stop, criteria = stop_ids(tok, prompt), stop_text_criteria(tok, tuple(stop_texts(prompt)))
    ours = greedy_new_tokens(embedded_model, batch["input_ids"], batch["attention_mask"], 40, stop, criteria)
    assert_generate_equal(ours, generate_reference(embedded_model, batch, 40, stop, stopping_criteria=criteria))
    lengths = sorted(map(len, ours))
    assert lengths[1] < 40 and lengths[-1] == 40  # two rows left the batch early, another ran to the limit


@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_greedy_new_tokens_on_a_sliding_window_cache_are_generates(name):
    """Gemma 3's sliding-window cache layers are cut down to the remaining rows too."""
    from transformers import Gemma3TextConfig, LlamaConfig

    from conftest import tiny
    model = (tiny(LlamaConfig) if name == "llama" else
             tiny(Gemma3TextConfig, sliding_window=3, layer_types=["sliding_attention", "full_attention"])).eval()
    torch.manual_seed(1)
    lengths = [3, 5, 6, 4, 7, 2]
    input_ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, n in enumerate(lengths):  # left-padded with id 0
        input_ids[row, -n:] = torch.randint(1, 64, (n,))
        attention_mask[row, -n:] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    free, _ = generate_reference(model, batch, 12, None)
    stop = [free[0][2], free[1][4]]  # rows 0 and 1 end by step 5; the others when they meet these ids
    ours = greedy_new_tokens(model, input_ids, attention_mask, 12, stop)
    assert_generate_equal(ours, generate_reference(model, batch, 12, stop))
    assert len(ours[0]) <= 3 and len(ours[1]) <= 5 and max(map(len, ours)) == 12


def test_a_model_without_logits_to_keep_is_answered_all_the_same():
    """A model whose forward takes no logits_to_keep (remote code, for one) gets every position's logits."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from conftest import tiny
    model = tiny(LlamaConfig).eval()

    class WholeLogits(LlamaForCausalLM):
        def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                    use_cache=None):
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                   past_key_values=past_key_values, use_cache=use_cache)
    whole = WholeLogits(model.config).eval()
    whole.load_state_dict(model.state_dict())
    input_ids, attention_mask = torch.tensor([[0, 5, 9], [7, 3, 2]]), torch.tensor([[0, 1, 1], [1, 1, 1]])
    assert (greedy_new_tokens(whole, input_ids, attention_mask, 6, [63])
            == greedy_new_tokens(model, input_ids, attention_mask, 6, [63]))
