# Set-up is part of every target: a fresh checkout needs only `make quickstart` or `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install quickstart test clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The main job on the embedded default: tiny CLIP, generated data, CPU.
quickstart: $(STAMP)
	$(BIN)/ablate train --config tune_specs/quickstart_trial.yaml --out runs/quickstart

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf runs .ablate_cache
