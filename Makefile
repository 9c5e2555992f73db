# Two entry points (see README): `make reproduce` and `make test`; `make test-fast` while editing. All create .venv
# when missing and reinstall only when pyproject.toml or this file changed (the stamp below).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.mtlkit-installed
# The torch pair served on our machines; environment.yml carries the same pins.
TORCH  := torch==2.14.1 torchvision==0.29.1
EXTRAS := notebooks,tests,grading,cluster
PRESET ?= smoke
# Notebooks executed at once by `make reproduce` (each kernel gets cores/JOBS torch threads).
JOBS   ?= 2

.PHONY: install reproduce lint test test-fast clean-runs

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	@touch $(STAMP)

reproduce: $(STAMP)
	$(BIN)/mtlkit data synth all --preset $(PRESET)
	$(BIN)/mtlkit reproduce --preset $(PRESET) --jobs $(JOBS)

# ruff's rules live in pyproject.toml ([tool.ruff]); --no-cache keeps the checkout clean.
lint: $(STAMP)
	$(BIN)/python -m ruff check --no-cache .

# Everything: lint, unit and end-to-end tests, and every notebook re-executed at smoke (nbval). CI runs this.
test: lint
	$(BIN)/python -m pytest

# Lint, then everything but the notebook re-execution and the tests marked slow (tests/conftest.py): <= 3 min on 2 cores.
test-fast: lint
	$(BIN)/python -m pytest -m "not notebooks and not slow"

clean-runs:
	rm -rf runs
