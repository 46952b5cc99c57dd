# Two set-up commands: `make demo` runs the main job on the bundled sample, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-torchvision install-dev style quality

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.core: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e ".[plots]"
	touch $@

# The CPU torch wheel is installed first, from PyTorch's CPU index, so that no extra can pull a CUDA build (a plain
# `pip install torch` on Linux brings the CUDA build and several GB of NVIDIA wheels). Where that index cannot be
# reached, the package index's torch is taken instead, with a warning.
TORCH ?= torch==2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
$(VENV)/.dev: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q --index-url $(TORCH_CPU_INDEX) "$(TORCH)" || \
	  { echo "warning: $(TORCH_CPU_INDEX) unreachable; installing $(TORCH) from the package index" >&2; \
	    $(BIN)/pip install -q "$(TORCH)"; }
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

demo: $(VENV)/.core
	$(BIN)/vital demo --out demo_out

install-dev: $(VENV)/.dev

test: $(VENV)/.dev
	$(BIN)/python -m pytest tests

# Families whose processor requires torchvision outright (Mistral 3's PixtralProcessor) are tested in a second
# environment: the package index serves torchvision only beside CUDA builds of torch, which import and run on CPU.
TV_VENV ?= .venv-torchvision
$(TV_VENV)/.dev: pyproject.toml
	$(PYTHON) -m venv $(TV_VENV)
	$(TV_VENV)/bin/pip install -q --upgrade pip
	$(TV_VENV)/bin/pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(TV_VENV)/bin/pip install -q -e ".[dev]"
	touch $@

test-torchvision: $(TV_VENV)/.dev
	$(TV_VENV)/bin/python -m pytest tests/test_sft_families.py tests/test_sft_packing.py -k mistral3

style: $(VENV)/.dev
	$(BIN)/ruff format vital_hub tests recipes builders benchmarks
	$(BIN)/ruff check --fix vital_hub tests recipes builders benchmarks

quality: $(VENV)/.dev
	$(BIN)/ruff check vital_hub tests recipes builders benchmarks
