# editlab: the README's commands. Every target is idempotent and installs what it needs first.
#   make demo    the whole pipeline on the tiny CPU default: world -> pretrain -> 200 LoRA edits -> Table 4 + plots
#   make test    run the test suite (fast; slow tests: make test-slow)
#   make bench   benchmarks, one JSON object each
#   make lint    ruff, and the package order's import contracts (pyproject.toml [tool.importlinter])

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.editlab-installed

.PHONY: setup demo test test-slow bench gpu-check lint clean

setup: $(STAMP)

# torch first, pinned: on this CPU machine pip takes the local CPU build; a GPU user gets the CUDA
# build of the same version from PyPI.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q 'torch==2.13.*'
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

DEMO_RUN := $(or $(EDITLAB_OUTPUTS),outputs)/edit/wikidata_synth_tiny/mistral_tiny_demo-s0/lora-single-n200-s0

demo: setup
	$(PY) -m editlab.world data=wikidata_synth_tiny progress=false > /dev/null
	$(PY) train.py model=mistral_tiny_demo
	$(PY) edit.py model=mistral_tiny_demo method=lora edits.n=200 edits.trace=4
	$(PY) evaluate.py run=$(DEMO_RUN)

# one pytest-xdist worker per core (at most 8): most tests run one torch thread or a one-thread subprocess
TEST_WORKERS ?= auto
test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --maxprocesses=8

test-slow: setup
	$(PY) -m pytest -q -m slow

bench: setup
	$(PY) bench/world.py
	$(PY) bench/pretrain.py
	$(PY) bench/edit.py
	$(PY) bench/launchers.py

gpu-check: setup  # one GPU, a few minutes: pretrain mistral_83m briefly, edit with LoRA, ROME, MEMIT, MEND (bench/gpu_check.py)
	$(PY) bench/gpu_check.py

lint: setup
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports

clean:
	rm -rf .cache outputs multirun
