# make train: set up .venv and train the default model on the shipped Multi30k corpus.
# make test:  set up .venv, lint, and run the test suite, one pytest-xdist worker per core (a test file stays on one
#             worker, so its module fixtures are built once).
# TORCH picks the PyTorch build: the default is a CPU build where one is at hand; a GPU user runs
#   make train TORCH=torch==2.13.0            (PyPI's Linux wheel, with CUDA)
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: train test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[test,deploy,align,hf]'
	touch $@

train: $(VENV)/.installed
	$(PY) train.py $(ARGS)

test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n auto --dist loadscope $(ARGS)

clean:
	rm -rf $(VENV) .cache outputs multirun
