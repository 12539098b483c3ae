# make train | make test | make bench | make lint — each creates .venv and installs on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: train test bench lint data

# constraints.txt pins every package to the versions the tests were run with (see docs/maintaining.md).
$(INSTALLED): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(INSTALLED)

data: $(INSTALLED)
	$(PY) -m mnist_common.data

train: data
	$(PY) -m torch_impl.train
	$(PY) -m flax_impl.train
	$(PY) -m mnist_common.compare runs/torch runs/flax

test: data
	$(PY) -m pytest

bench: data
	$(PY) benchmarks/run.py

lint: $(INSTALLED)
	$(PY) -m ruff check .
