# Every target bootstraps .venv first: torch==2.13.0 (the CPU wheel), then the exact pins, then
# this package in editable mode. The stamp file makes a finished install a no-op.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PYTEST  := TRITON_INTERPRET=1 $(BIN)/python -m pytest

.PHONY: demo test test-fast test-gpu bench lint venv clean compile-gate compile-gate-pinned compile-gate-triton-3.6 \
        gpu-check gpu-check-dry-run gpu-carry traffic

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

# Compile gate: every Triton kernel compiled for sm_90 at the GPU benchmark launches, with the pinned
# triton and with the GPU image's 3.6.0 (installed beside it, once); fails on a compile error, a
# spill, too much shared memory or an unlaunched kernel. `make -j2 compile-gate` runs both at once.
TRITON_36    := $(VENV)/triton-3.6.0
COMPILE_OUT  ?= out/compile-gate
COMPILE_ARGS ?=

$(TRITON_36)/.installed:
	$(BIN)/python -m pip install --quiet --no-deps --target $(TRITON_36) triton==3.6.0
	touch $@

compile-gate: compile-gate-pinned compile-gate-triton-3.6

compile-gate-pinned: $(STAMP)
	$(BIN)/loci-fast bench --compile --out $(COMPILE_OUT) $(COMPILE_ARGS)

compile-gate-triton-3.6: $(STAMP) $(TRITON_36)/.installed
	$(BIN)/loci-fast bench --compile --triton-path $(TRITON_36) --out $(COMPILE_OUT) $(COMPILE_ARGS)

# Bytes the kernels load and store (interpreted) against each benchmark case's minimal bytes.
traffic: $(STAMP)
	$(BIN)/loci-fast bench --traffic --out bench/results

# One-shot GPU check, for a session with a lent GPU: runs with the GPU image's own python (no venv,
# no network); results in bench/results/gpu-check-<date>-<device>/ to commit. See bench/gpu_check.py.
gpu-check:
	$(PY) bench/gpu_check.py $(GPU_CHECK_ARGS)

# Here, before a GPU session: check the steps, flags and imports without DeepSpeed/webdataset.
gpu-check-dry-run: $(STAMP) $(TRITON_36)/.installed
	$(BIN)/python bench/gpu_check.py --dry-run

# Pure-Python wheels the GPU image may lack (pytest), for the device tool's `carry: ["build/gpu-carry"]`.
gpu-carry: $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps --target build/gpu-carry pytest==8.4.2 pluggy==1.7.0 \
	    iniconfig==2.3.1 packaging==26.4 pygments==2.21.0

# ruff (pinned in requirements.txt, rules in ruff.toml); CI runs it before the tests.
lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
