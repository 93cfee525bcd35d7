"""Stage prepare_model: turn the base model named in params.yaml into a plain transformers folder.

    python -m stages.prepare_model

Reads model.*, prompt.markers and seed, and writes models/base (safetensors weights, config,
tokenizer with a pad token). With prompt.markers = special_tokens, <|question|> and <|answer|> become
added special tokens (one id each) and the embeddings grow by two rows (the mean of the others).
The embedded model is read from the folder `make setup` converted its GGUF to (the same weights,
without ~25 s of GGUF parsing: llm_fft.model.converted_embedded), and a hub model is downloaded once;
either way dvc.lock records the hash of exactly the weights trained.
"""

import sys

import torch
from transformers import CONFIG_MAPPING

from llm_fft.model import DTYPES, MODEL_SPEC, ModelNotFound, load_base, prepare_tokenizer, save_model
from llm_fft.params import ParamsError, fail_if_problems, load_params, problems_in_section, shared_problems
from llm_fft.paths import BASE_MODEL
from llm_fft.prompts import ANSWER_MARK, PROMPT_SPEC, QUESTION_MARK


def main():
    params = load_params()
    fail_if_problems(problems_in_section(params, "model", MODEL_SPEC) + shared_problems(params, keys=["seed"])
                     + problems_in_section(params, "prompt", PROMPT_SPEC))
    cfg = params["model"]
    if cfg["trust_remote_code"]:
        print(f"warning: trust_remote_code is on: code shipped with {cfg['name']} will run here")
    try:
        model, tokenizer = load_base(cfg["name"], cfg["revision"], cfg["trust_remote_code"],
                                     DTYPES[cfg["dtype"]])
        tokenizer = prepare_tokenizer(tokenizer)
    except ModelNotFound as e:
        sys.exit(f"error: {e}")
    if model.config.model_type not in CONFIG_MAPPING:
        # The later stages load models/base without remote code, as the architecture transformers has built in.
        sys.exit(f"error: {cfg['name']} is of an architecture transformers does not have built in "
                 f"(model_type {model.config.model_type!r}, loaded through its own code); the stages after "
                 "prepare_model load models/base without remote code, so it cannot be fine-tuned here")
    if params["prompt"]["markers"] == "special_tokens":
        tokenizer.add_tokens([QUESTION_MARK, ANSWER_MARK], special_tokens=True)
        torch.manual_seed(params["seed"])  # mean_resizing draws the new rows around the mean embedding
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    save_model(model, tokenizer, BASE_MODEL, DTYPES[cfg["dtype"]])
    n_params = sum(p.numel() for p in model.parameters())
    print(f"wrote {BASE_MODEL}: {type(model).__name__}, {n_params / 1e6:.1f}M parameters, "
          f"{cfg['dtype']}, eos {tokenizer.eos_token!r} ({tokenizer.eos_token_id}), "
          f"pad {tokenizer.pad_token!r} ({tokenizer.pad_token_id})")


if __name__ == "__main__":
    try:
        main()
    except ParamsError as e:  # the library raises; the stage says why in one message and exits non-zero
        sys.exit(f"error: {e}")
