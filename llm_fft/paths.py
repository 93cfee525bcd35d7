"""Every file the pipeline reads or writes, named once. The stages, dvc.yaml and the tests agree with
these names (tests/test_paths.py). Files the user chooses (the facts file, a dataset file of their own)
are named in params.yaml instead.

Naming: a set's questions as generate_dataset writes them are *_QUESTIONS (data/dev.jsonl), the same
set tokenized by parse_qa is *_QA (data/dev_qa.jsonl); the trained set is "trained" everywhere.
"""

from pathlib import Path

# prepare_model, finetune, interpolate: the models (folders)
BASE_MODEL = Path("models/base")
FINETUNED_MODEL = Path("models/finetuned")
FINAL_MODEL = Path("models/final")
CHECKPOINTS = Path("models/checkpoints/finetune")  # not a DVC output: survives a crash
CHECKPOINT = CHECKPOINTS / "checkpoint.pt"

# generate_dataset: the sets as text
TRAINED_DATASET = Path("data/dataset.txt")  # the trained pairs, in the dataset file format
STATEMENTS = Path("data/statements.jsonl")
DEV_QUESTIONS = Path("data/dev.jsonl")
HELDOUT_QUESTIONS = Path("data/heldout.jsonl")
UNKNOWN_QUESTIONS = Path("data/unknown.jsonl")
UNKNOWN_DEV_QUESTIONS = Path("data/unknown_dev.jsonl")
REFUSALS = Path("data/refusals.jsonl")
ANSWER_VARIANTS = Path("data/answer_variants.jsonl")
DATASET_METRICS = Path("metrics/dataset.json")

# parse_qa: the sets tokenized (q_ids, input_ids, labels)
TRAINED_QA = Path("data/trained_qa.jsonl")
STATEMENTS_QA = Path("data/statements_qa.jsonl")
DEV_QA = Path("data/dev_qa.jsonl")
HELDOUT_QA = Path("data/heldout_qa.jsonl")
UNKNOWN_QA = Path("data/unknown_qa.jsonl")
UNKNOWN_DEV_QA = Path("data/unknown_dev_qa.jsonl")
PREVIEW = Path("data/preview.md")

# make_rehearsal: the retention probe it reads, the base model's own text it writes
RETENTION = Path("data/retention.yaml")
REHEARSAL = Path("data/rehearsal.jsonl")
REHEARSAL_DEV = Path("data/rehearsal_dev.jsonl")

# teacher_distributions: the base model's next-token distributions over the rehearsal texts
REHEARSAL_TEACHER = Path("data/rehearsal_teacher.safetensors")

# baseline_eval
BASELINE_METRICS = Path("metrics/baseline.json")
BASELINE_ANSWERS = Path("metrics/baseline_answers.csv")
BASELINE_CHAT_METRICS = Path("metrics/baseline_chat.json")
BASELINE_CHAT_ANSWERS = Path("metrics/baseline_chat_answers.csv")

# finetune (DVCLive's folder: metrics.json and the plots under it)
FINETUNE_LIVE = Path("metrics/finetune")
FINETUNE_METRICS = FINETUNE_LIVE / "metrics.json"
FINETUNE_PLOTS = FINETUNE_LIVE / "plots/metrics"
TRAIN_LOSS = FINETUNE_PLOTS / "train/loss.tsv"
DEV_LOSS = FINETUNE_PLOTS / "dev/answer_nll.tsv"

# interpolate
INTERPOLATION_METRICS = Path("metrics/interpolation.json")
INTERPOLATION_CURVE = Path("metrics/interpolation_curve.json")

# final_eval
FINAL_METRICS = Path("metrics/final.json")
FINAL_ANSWERS = Path("metrics/final_answers.csv")
DELTA = Path("metrics/delta.json")
GATE_CURVE = Path("metrics/gate_curve.json")

# report
REPORT_MD = Path("metrics/report.md")
REPORT_HTML = Path("metrics/report.html")
LOSS_PNG = Path("metrics/loss.png")

# outside the pipeline: make bench, make seeds, make gpu-check
BENCH = Path("metrics/bench.json")
BENCH_SMOKE = Path("metrics/bench_smoke.json")  # never overwrites the real benchmark's numbers
SEEDS = Path("metrics/seeds")
GPU_CHECK = Path("metrics/gpu_check.json")
