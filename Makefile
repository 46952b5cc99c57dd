# Two set-up commands: `make demo` runs the main job on the bundled sample, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install-dev style quality

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.core: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

# The CPU torch wheel is installed first so that no extra can pull a CUDA build.
$(VENV)/.dev: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

demo: $(VENV)/.core
	$(BIN)/vital demo --out demo_out

install-dev: $(VENV)/.dev

test: $(VENV)/.dev
	$(BIN)/python -m pytest tests

style: $(VENV)/.dev
	$(BIN)/ruff format vital_hub tests recipes builders benchmarks
	$(BIN)/ruff check --fix vital_hub tests recipes builders benchmarks

quality: $(VENV)/.dev
	$(BIN)/ruff check vital_hub tests recipes builders benchmarks
