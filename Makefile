# Every target bootstraps .venv first: torch==2.13.0 (the CPU wheel), then the exact pins, then
# this package in editable mode. The stamp file makes a finished install a no-op.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PYTEST  := TRITON_INTERPRET=1 $(BIN)/python -m pytest

.PHONY: demo test test-fast test-gpu bench lint venv clean

venv: $(STAMP)

$(STAMP): requirements.txt setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	DS_BUILD_OPS=0 $(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e ".[dev]"
	touch $(STAMP)

# The main job: synthetic PyBullet data, the five object stages through the deepspeed launcher
# (2 ranks: GPUs when present, else CPU), then out/demo/REPORT.md. A killed demo resumes;
# `make demo DEMO_ARGS=--fresh` starts over.
demo: $(STAMP)
	$(BIN)/python -m loci_fast.demo --out out/demo $(DEMO_ARGS)

# CI's command: every test that needs no GPU, Triton interpreted on the CPU.
test: $(STAMP)
	$(PYTEST) -m "not gpu" -q

# Skips the tests marked slow (real multi-rank launches, fault injection): a quick check.
test-fast: $(STAMP)
	$(PYTEST) -m "not gpu and not slow" -q

test-gpu: $(STAMP)
	$(BIN)/python -m pytest -m gpu -q

bench: $(STAMP)
	$(BIN)/loci-fast bench

# ruff (pinned in requirements.txt, rules in ruff.toml); CI runs it before the tests.
lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
