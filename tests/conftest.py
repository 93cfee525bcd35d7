"""Shared fixtures: the embedded tokenizers and model, loaded once per test session (no network).

The Korean profile's Gemma tokenizer needs `make setup PROFILE=ko`; without it those tests are
skipped, unless REQUIRE_KO_PROFILE=1 (set by .ci/run), which makes its absence a failure.
"""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def embedded_tokenizer():
    from transformers import AutoTokenizer

    from llm_fft.model import embedded_gguf, prepare_tokenizer
    folder, gguf_file = embedded_gguf()
    return prepare_tokenizer(AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file))


@pytest.fixture(scope="session")
def embedded_model(embedded_tokenizer):
    import torch

    from llm_fft.model import load_base
    model, _ = load_base("embedded", "main", False, torch.float32)
    return model.eval()


@pytest.fixture(scope="session")
def gemma_tokenizer():
    from transformers import AutoTokenizer

    from llm_fft.model import EMBEDDED_GEMMA, GEMMA_PACKAGE, embedded_gguf, prepare_tokenizer
    if importlib.util.find_spec(GEMMA_PACKAGE) is None:
        if os.environ.get("REQUIRE_KO_PROFILE") == "1":
            pytest.fail("REQUIRE_KO_PROFILE=1 but the Gemma packages are missing: make setup PROFILE=ko")
        pytest.skip("the Korean profile is not installed (make setup PROFILE=ko)")
    folder, gguf_file = embedded_gguf(EMBEDDED_GEMMA)
    return prepare_tokenizer(AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file))


@pytest.fixture(scope="session", params=["smollm2", "gemma3"])
def any_tokenizer(request):
    """Each embedded tokenizer in turn: SmolLM2 (no BOS, pad == EOS, ChatML) and Gemma 3 (BOS 2
    first, EOS 1, pad 0, no chat template)."""
    return request.getfixturevalue("embedded_tokenizer" if request.param == "smollm2" else "gemma_tokenizer")
