"""Stage prepare_model: turn the base model named in params.yaml into a plain transformers folder.

    python stages/prepare_model.py

Reads model.* and writes models/base (safetensors weights, config, tokenizer with a pad token).
The embedded GGUF is dequantized once here (~20 s) so later stages load it in seconds, and a hub
model is downloaded once; either way dvc.lock records the hash of exactly the weights trained.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # python stages/x.py: import llm_fft from the repo

from llm_fft.model import DTYPES, MODEL_SPEC, ModelNotFound, load_base, prepare_tokenizer, save_model
from llm_fft.params import fail_if_problems, load_params, problems_in_section

OUT_DIR = Path("models/base")



def main():
    params = load_params()
    fail_if_problems(problems_in_section(params, "model", MODEL_SPEC))
    cfg = params["model"]
    if cfg["trust_remote_code"]:
        print(f"warning: trust_remote_code is on: code shipped with {cfg['name']} will run here")
    try:
        model, tokenizer = load_base(cfg["name"], cfg["revision"], cfg["trust_remote_code"],
                                     DTYPES[cfg["dtype"]])
        tokenizer = prepare_tokenizer(tokenizer)
    except ModelNotFound as e:
        sys.exit(f"error: {e}")
    save_model(model, tokenizer, OUT_DIR, DTYPES[cfg["dtype"]])
    n_params = sum(p.numel() for p in model.parameters())
    print(f"wrote {OUT_DIR}: {type(model).__name__}, {n_params / 1e6:.1f}M parameters, "
          f"{cfg['dtype']}, eos {tokenizer.eos_token!r} ({tokenizer.eos_token_id}), "
          f"pad {tokenizer.pad_token!r} ({tokenizer.pad_token_id})")


if __name__ == "__main__":
    main()
