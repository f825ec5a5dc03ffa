# make train: set up .venv and train the default model on the shipped Multi30k corpus.
# make test:  set up .venv and run the test suite.
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
	$(PY) -m pip install --quiet -e '.[test,deploy]'
	touch $@

# tcmalloc where the system has it (Debian/Ubuntu: apt install libtcmalloc-minimal4): glibc's malloc keeps the
# memory that batches of changing shapes free, and a run's memory grows by gigabytes (README, memory).
TCMALLOC ?= $(firstword $(wildcard /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 \
	/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4 /usr/lib64/libtcmalloc_minimal.so.4))

train: $(VENV)/.installed
	$(if $(TCMALLOC),LD_PRELOAD=$(TCMALLOC) )$(PY) train.py $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest -q $(ARGS)

clean:
	rm -rf $(VENV) .cache outputs multirun
