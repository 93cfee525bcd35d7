"""Stage teacher_distributions: the base model's next-token distributions over the rehearsal texts,
computed once for finetune.rehearsal_loss kl.

    python -m stages.teacher_distributions

Reads teacher_distributions.* and device in params.yaml, data/rehearsal.jsonl and models/base. At every
learned position of every rehearsal text it keeps the teacher_distributions.top_k most likely next
tokens with their log-probabilities, and the log of the probability left over (llm_fft.distill).
Writes data/rehearsal_teacher.safetensors, which finetune distils from: the teacher is never loaded
there, nor run in every epoch. Prints how much of the teacher's probability the kept tokens hold.
"""

import sys

import torch

from llm_fft.distill import save_teacher, teacher_top_k
from llm_fft.files import read_jsonl
from llm_fft.model import load_pretrained
from llm_fft.params import ParamsError, fail_if_problems, load_params, pick_device, problems_in_section, shared_problems
from llm_fft.paths import BASE_MODEL, REHEARSAL, REHEARSAL_TEACHER

SPEC = {
    "top_k": (int, lambda v: v >= 1, "an integer >= 1 (tokens kept per position)"),
    "batch_size": (int, lambda v: v >= 1, "an integer >= 1 (texts per forward pass)"),
}


def main():
    params = load_params()
    fail_if_problems(problems_in_section(params, "teacher_distributions", SPEC)
                     + shared_problems(params, keys=["device"]))
    cfg = params["teacher_distributions"]
    records = read_jsonl(REHEARSAL)
    device = pick_device(params["device"])
    # As make_rehearsal wrote the texts: bf16 on CUDA, fp32 on the CPU (the exact base model).
    model, tokenizer = load_pretrained(BASE_MODEL, torch.bfloat16 if device.type == "cuda" else torch.float32, device)
    teacher = teacher_top_k(model.eval(), records, cfg["top_k"], cfg["batch_size"], tokenizer.pad_token_id, device)
    REHEARSAL_TEACHER.parent.mkdir(parents=True, exist_ok=True)
    tmp = REHEARSAL_TEACHER.with_name(REHEARSAL_TEACHER.name + ".tmp")
    save_teacher(tmp, teacher, records)
    tmp.replace(REHEARSAL_TEACHER)  # all or nothing
    kept = teacher["logprobs"].exp().sum(-1)
    held = f"; the top {cfg['top_k']} tokens hold {kept.mean():.1%} of the teacher's probability on average " \
           f"(lowest {kept.min():.1%})" if len(kept) else ""
    print(f"wrote {REHEARSAL_TEACHER}: {len(records)} texts, {len(kept)} positions{held}")


if __name__ == "__main__":
    try:
        main()
    except ParamsError as e:  # the library raises; the stage says why in one message and exits non-zero
        sys.exit(f"error: {e}")
