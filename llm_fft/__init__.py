"""Shared code of the llm_fft pipeline, one module per concern (a stage depends on the ones it imports).

paths       -- every file the pipeline reads or writes, named once
params      -- reading and validating params.yaml, seeding, choosing the device
text        -- the one text normaliser every comparison goes through
files       -- JSON Lines, and writing outputs all or nothing
facts       -- the facts source (data/facts.yaml) and its unknown questions, checked (generate_dataset only)
retention   -- the retention probe (data/retention.yaml): general text, prompts and general-knowledge facts
augment     -- rule-based rewordings of your own questions and answers as statements (generate_dataset only)
coverage    -- how many phrasings, answers, statements and test questions each fact has; thin-data warnings
formats     -- the dataset file in four formats (custom tokens, JSON, JSON Lines, separator), validated
llm_writer  -- the llm backend of generate_dataset: a language model writes question/answer pairs
prompts     -- prompt styles, the question/answer markers, tokenizing pairs and plain text, stop tokens
batching    -- padding, label masks and packing of tokenized examples
model       -- loading base models (embedded GGUF, hub id, local folder) and saving them
training    -- the optimisation step, the losses and resumable checkpoints of stages/finetune.py
distill     -- the base model's stored next-token distributions over the rehearsal text, and the KL to them
nll         -- teacher-forced answer NLL: finetune's dev loss, the evaluations' answer NLL
generation  -- batched greedy answering and the one decoding protocol (limit, stops, batch size)
metrics     -- scoring one answer (the key-fact rule, right/abstained/wrong), the headline, delta
evaluation  -- the question sets, the confidence gate, scoring both evaluations the same way
summary     -- the few lines make run prints at the end
report      -- the before/after report (markdown and self-contained HTML, loss curve image)
ask         -- `python -m llm_fft.ask`: question the fine-tuned model (make ask / make chat)
bench       -- `python -m llm_fft.bench`: time the training step and the evaluation (make bench)
seeds       -- `python -m llm_fft.seeds`: one setting over several seeds (make seeds)
gpu_check   -- `python -m llm_fft.gpu_check`: every stage on a random kanana-shaped model, on a new GPU box (make gpu-check)
"""
