"""Ask the fine-tuned model (models/final, the one final_eval evaluates) or the base model questions,
with the pipeline's prompt and decoding.

    python -m llm_fft.ask "별무리섬의 인구는 몇 명인가요?"     # one question (make ask Q="...")
    python -m llm_fft.ask                                   # interactive (make chat); Ctrl-D quits
    python -m llm_fft.ask --base "..."                      # the base model, as before fine-tuning

The answer streams as it is generated. Prompt style (prompt.*), BOS handling, greedy decoding, the
tokens that end an answer and the generation limit (longest training answer +
evaluate.extra_new_tokens) are those of the evaluations.
"""

import argparse
import sys
from pathlib import Path

import torch
from transformers import TextStreamer

from llm_fft.data import PromptError, prompt_ids, read_jsonl, stop_ids
from llm_fft.evaluation import load_for_evaluation
from llm_fft.generation import generation_limit
from llm_fft.model import ModelNotFound
from llm_fft.params import ParamsError, load_params

RECORDS = Path("data/qa.jsonl")
DEV_RECORDS = Path("data/dev_qa.jsonl")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", help="the question; none = ask interactively")
    parser.add_argument("--base", action="store_true", help="use models/base instead of models/final")
    args = parser.parse_args()

    params = load_params()
    model_dir = Path("models/base" if args.base else "models/final")
    try:
        model, tokenizer, device = load_for_evaluation(params, model_dir)
    except (ModelNotFound, ParamsError) as e:
        sys.exit(f"error: {e}")
    # The evaluations' limit: from the trained and dev answers.
    asked = read_jsonl(RECORDS) + (read_jsonl(DEV_RECORDS) if DEV_RECORDS.exists() else [])
    max_new_tokens = generation_limit(asked, params["evaluate"]["extra_new_tokens"])
    try:
        stop = stop_ids(tokenizer, params["prompt"])
    except PromptError as e:
        sys.exit(f"error: {e}")

    def answer(question):
        ids = torch.tensor([prompt_ids(tokenizer, question, params["prompt"])], device=device)
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                           do_sample=False, pad_token_id=tokenizer.pad_token_id,
                           eos_token_id=stop,
                           streamer=TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True))

    if args.question is not None:
        answer(args.question)
        return
    print(f"{model_dir}: ask a question, Ctrl-D to quit.")
    while True:
        try:
            question = input("question> ").strip()
        except EOFError:
            print()
            return
        if question:
            answer(question)


if __name__ == "__main__":
    main()
