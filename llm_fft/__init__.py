"""Shared code of the llm_fft pipeline, one module per concern.

params     -- reading and validating params.yaml, seeding, choosing the device
data       -- the dataset file format, prompts, tokenization, batching
model      -- loading base models (embedded GGUF, hub id, local folder) and saving them
training   -- the optimisation step and resumable checkpoints used by stages/finetune.py
evaluation -- batched greedy answering, answer loss, metrics and tables
files      -- writing outputs all or nothing
ask        -- `python -m llm_fft.ask`: question the fine-tuned model (make ask / make chat)
"""
