# editlab: the README's commands. Every target is idempotent and installs what it needs first.
#   make demo    build the tiny world, pretrain mistral_tiny on it, print the checkpoint and its accuracy
#   make test    run the test suite (fast; slow tests: make test-slow)
#   make bench   benchmarks, one JSON object each

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.editlab-installed

.PHONY: setup demo test test-slow bench lint clean

setup: $(STAMP)

# torch first, pinned: on this CPU machine pip takes the local CPU build; a GPU user gets the CUDA
# build of the same version from PyPI.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q 'torch==2.13.*'
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(PY) -m editlab.world data=wikidata_synth_tiny progress=false > /dev/null
	$(PY) train.py

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

bench: setup
	$(PY) bench/world.py
	$(PY) bench/pretrain.py

lint: setup
	$(PY) -m ruff check .

clean:
	rm -rf .cache outputs multirun
