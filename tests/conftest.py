"""Shared fixtures: the embedded tokenizer and model, loaded once per test session (no network)."""

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
