"""Shared code of the llm_fft pipeline, one module per concern.

params      -- reading and validating params.yaml, seeding, choosing the device
data        -- the facts source, prompt styles, tokenization, batching
formats     -- the dataset file in four formats (custom tokens, JSON, JSON Lines, separator), validated
llm_writer  -- the llm backend of generate_dataset: a language model writes question/answer pairs
model       -- loading base models (embedded GGUF, hub id, local folder) and saving them
training    -- the optimisation step and resumable checkpoints used by stages/finetune.py
evaluation  -- batched greedy answering, answer loss, the three evaluation sets, metrics and delta
report      -- the before/after report (markdown and self-contained HTML, loss curve image)
files       -- writing outputs all or nothing
ask         -- `python -m llm_fft.ask`: question the fine-tuned model (make ask / make chat)
bench       -- `python -m llm_fft.bench`: time the training step and the evaluation (make bench)
"""
