"""The embedded model is converted from its GGUF once, into the venv, and loads as the GGUF would."""

import hashlib

import pytest
import torch
import transformers

from conftest import tiny
from llm_fft import model as model_module
from llm_fft.model import EMBEDDED, converted_embedded, embedded_gguf, load_base, load_gguf


@pytest.mark.slow
def test_the_converted_embedded_model_is_the_gguf_dequantized():
    from_gguf, gguf_tokenizer = load_gguf(*embedded_gguf(), torch.float32)  # ~25 s: the GGUF's metadata
    converted, tokenizer = load_base(EMBEDDED, "main", False, torch.float32)
    gguf_weights, weights = from_gguf.state_dict(), converted.state_dict()
    assert gguf_weights.keys() == weights.keys()
    for name, tensor in gguf_weights.items():
        assert weights[name].dtype == torch.float32 and torch.equal(weights[name], tensor), name
    # Where it was loaded from, and the class save_pretrained records: all else is the GGUF's.
    unrelated = ("_name_or_path", "architectures")
    assert ({k: v for k, v in converted.config.to_dict().items() if k not in unrelated}
            == {k: v for k, v in from_gguf.config.to_dict().items() if k not in unrelated})
    text = "<|im_start|>user\nThe capital of France is 파리, 별무리섬의 인구는 1,234명?<|im_end|>"
    assert tokenizer(text).input_ids == gguf_tokenizer(text).input_ids
    assert (tokenizer.eos_token, tokenizer.bos_token, tokenizer.chat_template) == (
        gguf_tokenizer.eos_token, gguf_tokenizer.bos_token, gguf_tokenizer.chat_template)


def fake_gguf(tmp_path, monkeypatch, tokenizer, while_reading=lambda: None):
    """embedded_gguf pointed at a small file in tmp_path, and its reader at a tiny model: returns the
    file and the list of contents read."""
    gguf, reads = tmp_path / "model.gguf", []

    def read_gguf(folder, gguf_file, dtype):
        reads.append((folder / gguf_file).read_bytes())
        while_reading()
        from transformers import LlamaConfig
        return tiny(LlamaConfig), tokenizer

    monkeypatch.setattr(model_module, "embedded_gguf", lambda name: (tmp_path, gguf.name))
    monkeypatch.setattr(model_module, "load_gguf", read_gguf)
    monkeypatch.setattr(model_module, "CONVERTED", tmp_path / "converted")
    return gguf, reads


def test_the_gguf_is_converted_once_and_again_when_it_changes(tmp_path, monkeypatch, embedded_tokenizer):
    gguf, reads = fake_gguf(tmp_path, monkeypatch, embedded_tokenizer)
    gguf.write_bytes(b"first")
    leftover = tmp_path / "converted" / EMBEDDED / "0123-transformers5.0.abc123"  # a killed conversion's
    leftover.mkdir(parents=True)
    first = converted_embedded(EMBEDDED)
    assert converted_embedded(EMBEDDED) == first and reads == [b"first"]
    assert (first / "config.json").is_file() and (first / "tokenizer.json").is_file()
    assert list(first.parent.iterdir()) == [first] and first.stat().st_mode & 0o777 == 0o755
    gguf.write_bytes(b"second")
    second = converted_embedded(EMBEDDED)
    assert second != first and reads == [b"first", b"second"]
    assert list(second.parent.iterdir()) == [second]  # the first GGUF's conversion is gone
    model, _ = load_base(EMBEDDED, "main", False, torch.float32)
    assert model.config.vocab_size == 64  # the tiny model converted last


def test_a_conversion_finished_by_another_process_meanwhile_is_used(tmp_path, monkeypatch, embedded_tokenizer):
    def another_process_converts():  # while this one reads the GGUF
        expected.mkdir(parents=True)
        (expected / "config.json").write_text("{}")

    gguf, reads = fake_gguf(tmp_path, monkeypatch, embedded_tokenizer, another_process_converts)
    gguf.write_bytes(b"gguf")
    expected = model_module.CONVERTED / EMBEDDED / (
        f"{hashlib.sha256(b'gguf').hexdigest()[:16]}-transformers{transformers.__version__}")
    assert converted_embedded(EMBEDDED) == expected
    assert list(expected.parent.iterdir()) == [expected] and (expected / "config.json").read_text() == "{}"
