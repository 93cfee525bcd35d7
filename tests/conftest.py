"""Shared fixtures: the embedded tokenizers and model, loaded once per test session (no network).

The Korean profile's Gemma tokenizer needs `make setup PROFILE=ko`; without it those tests are
skipped, unless REQUIRE_KO_PROFILE=1 (set by .ci/run), which makes its absence a failure.
"""

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The stages and tools the tests start as subprocesses import llm_fft from this checkout, as the
# tests themselves do, not from wherever the venv's editable install points (another clone's).
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))


def record(prompt_len, answer_len, first_id=10):
    """A synthetic tokenized example: consecutive ids, the prompt unsupervised."""
    from llm_fft.batching import IGNORE_INDEX
    ids = list(range(first_id, first_id + prompt_len + answer_len))
    return {"q_ids": ids[:prompt_len], "input_ids": ids, "labels": [IGNORE_INDEX] * prompt_len + ids[prompt_len:]}


def tiny(config_class, **extra):
    """A tiny randomly initialised causal LM (vocabulary 64) in training mode, seeded."""
    import torch
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    config = config_class(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, head_dim=8, vocab_size=64, **extra)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).train()
    # As finetune sets it. With a KV cache, transformers would not look for packed examples in
    # position_ids, and a packed row would be read as one sequence.
    model.config.use_cache = False
    return model


@pytest.fixture(scope="session")
def embedded_tokenizer():
    from transformers import AutoTokenizer

    from llm_fft.model import converted_embedded, prepare_tokenizer
    return prepare_tokenizer(AutoTokenizer.from_pretrained(converted_embedded()))


@pytest.fixture(scope="session")
def embedded_model(embedded_tokenizer):
    import torch

    from llm_fft.model import load_base
    model, _ = load_base("embedded", "main", False, torch.float32)
    return model.eval()


@pytest.fixture(scope="session")
def gemma_tokenizer():
    from transformers import AutoTokenizer

    from llm_fft.model import EMBEDDED_GEMMA, GEMMA_PACKAGE, converted_embedded, prepare_tokenizer
    if importlib.util.find_spec(GEMMA_PACKAGE) is None:
        if os.environ.get("REQUIRE_KO_PROFILE") == "1":
            pytest.fail("REQUIRE_KO_PROFILE=1 but the Gemma packages are missing: make setup PROFILE=ko")
        pytest.skip("the Korean profile is not installed (make setup PROFILE=ko)")
    return prepare_tokenizer(AutoTokenizer.from_pretrained(converted_embedded(EMBEDDED_GEMMA)))


@pytest.fixture(scope="session", params=["smollm2", "gemma3"])
def any_tokenizer(request):
    """Each embedded tokenizer in turn: SmolLM2 (no BOS, pad == EOS, ChatML) and Gemma 3 (BOS 2
    first, EOS 1, pad 0, no chat template)."""
    return request.getfixturevalue("embedded_tokenizer" if request.param == "smollm2" else "gemma_tokenizer")
