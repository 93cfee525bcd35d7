"""Can the base model answer a held-out question when the fact is written before it? The first step of
prompt distillation (issue #24 item 5; Kujanpää et al., TMLR 2025): only a teacher that answers from
context is worth distilling into a student that sees the question alone (docs/learning-quality.md).

    python docs/analysis/in_context_teacher.py embedded            # SmolLM2-135M-Instruct
    python docs/analysis/in_context_teacher.py embedded-gemma      # gemma-3-270m (make setup PROFILE=ko)

For every held-out question of data/facts.yaml, the base model answers greedily (the evaluations'
answer_questions, 48 new tokens) in three prompt styles, each with the fact's own answer sentence
written before the question and without it (the control): custom tokens (the pipeline's format),
plain `질문: … 답:` text, and the tokenizer's chat template (the fact and the question in one user
turn). Printed: how many state the key fact (llm_fft.metrics.states_key_fact), and a few answers.
No training, no file written.
"""

import sys

import torch

from llm_fft.facts import load_facts
from llm_fft.generation import answer_questions
from llm_fft.metrics import states_key_fact
from llm_fft.model import load_base, prepare_tokenizer
from llm_fft.prompts import ANSWER_MARK, QUESTION_MARK

STYLES = {
    "custom tokens": lambda context, q, tok: f"{context}{QUESTION_MARK}\n{q}\n{ANSWER_MARK}\n",
    "plain 질문/답": lambda context, q, tok: f"{context}질문: {q}\n답:",
    "chat template": lambda context, q, tok: tok.apply_chat_template(
        [{"role": "user", "content": f"{context}{q}"}], add_generation_prompt=True, tokenize=False),
}


def main(name):
    model, tokenizer = load_base(name, "main", False, torch.float32)
    tokenizer = prepare_tokenizer(tokenizer)
    model.eval()
    questions = [(fact, q) for fact in load_facts("data/facts.yaml") for q in fact["held_out"]]
    print(f"{name}: {len(questions)} held-out questions")
    for style, build in STYLES.items():
        if style == "chat template" and not getattr(tokenizer, "chat_template", None):
            print(f"  {style}: the tokenizer has none")
            continue
        for with_fact in (True, False):
            records = []
            for fact, q in questions:
                text = build(f"{fact['answer']}\n" if with_fact else "", q, tokenizer)
                special = style != "chat template"  # a chat template writes its own BOS
                records.append({"q_ids": tokenizer(text, add_special_tokens=special)["input_ids"],
                                "key": fact["key"], "answer": fact["answer"]})
            answers = answer_questions(model, tokenizer, records, 32, 48, "cpu",
                                       stop_texts=(QUESTION_MARK, ANSWER_MARK, "\n질문:"))
            right = [states_key_fact(a["text"], r) for a, r in zip(answers, records)]
            print(f"  {style:14s} {'fact before the question' if with_fact else 'question alone (control)':26s} "
                  f"states the key fact {sum(right):2d} of {len(right)}")
            for a, (fact, q), ok in list(zip(answers, questions, right))[:3]:
                print(f"      {'RIGHT' if ok else 'wrong'} {q} -> {a['text'][:80]!r} (key {fact['key']})")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main(sys.argv[1] if len(sys.argv) > 1 else "embedded")
