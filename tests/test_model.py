"""The embedded model is converted from its GGUF once, into the venv, and loads as the GGUF would."""

import pytest
import torch

from llm_fft import model as model_module
from llm_fft.model import EMBEDDED, converted_embedded, embedded_gguf, load_base, load_gguf
from tests.conftest import tiny


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


def test_the_gguf_is_converted_once_and_again_when_it_changes(tmp_path, monkeypatch, embedded_tokenizer):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"first")
    reads = []

    def read_gguf(folder, gguf_file, dtype):
        reads.append((folder / gguf_file).read_bytes())
        from transformers import LlamaConfig
        return tiny(LlamaConfig), embedded_tokenizer

    monkeypatch.setattr(model_module, "embedded_gguf", lambda name: (tmp_path, gguf.name))
    monkeypatch.setattr(model_module, "load_gguf", read_gguf)
    monkeypatch.setattr(model_module, "CONVERTED", tmp_path / "converted")
    (tmp_path / "converted").mkdir()
    (tmp_path / "converted" / "embedded-0123.half-written").mkdir()  # a killed conversion's leftover
    first = converted_embedded(EMBEDDED)
    assert converted_embedded(EMBEDDED) == first and reads == [b"first"]
    assert (first / "config.json").is_file() and (first / "tokenizer.json").is_file()
    gguf.write_bytes(b"second")
    second = converted_embedded(EMBEDDED)
    assert second != first and reads == [b"first", b"second"]
    model, _ = load_base(EMBEDDED, "main", False, torch.float32)
    assert model.config.vocab_size == 64  # the tiny model converted last
