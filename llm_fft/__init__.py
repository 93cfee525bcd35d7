"""Shared code of the llm_fft pipeline, one module per concern.

params    -- reading and validating params.yaml, seeding, choosing the device
data      -- the dataset file format, prompts, tokenization, batching
model     -- loading base models (embedded GGUF, hub id, local folder) and saving them
training  -- the optimisation step used by stages/finetune.py
evaluation -- batched greedy answering, answer loss, metrics and tables
"""
