# Set-up is part of every target: a fresh checkout needs only `make quickstart` or `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install quickstart trial screenshots lint test test-slow rehearse cluster-rehearsal clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The main job on the embedded default: every method on generated data with a tiny CLIP, local
# Ray on CPU, MLflow in ./mlflow.db. Running it again continues (or just reports) the same sweep.
# (QUICKSTART_SPEC: tests run this target's command on a smaller spec)
QUICKSTART_SPEC ?= tune_specs/quickstart.yaml
quickstart: $(STAMP)
	$(BIN)/ablate sweep --spec $(QUICKSTART_SPEC) \
		$$(test -f runs/ray/quickstart/ablate_sweep.json && echo --resume)

# One trial, no Ray: the trainer alone.
trial: $(STAMP)
	$(BIN)/ablate train --config tune_specs/quickstart_trial.yaml --out runs/quickstart_trial

# The README's images (tune_specs/quickstart_*.png) from the quickstart's store, in headless Chromium:
# the prepared runs view and its charts (an `mlflow server` on 127.0.0.1) and the report page.
screenshots: $(STAMP)
	$(BIN)/ablate report --experiment quickstart --out reports/quickstart
	$(BIN)/python -m ablate.tracking.screenshots --experiment quickstart --report reports/quickstart --out tune_specs

# Lint and type rules (pyproject.toml) hold before any test runs.
lint: $(STAMP)
	$(BIN)/ruff check ablate tests benchmarks
	$(BIN)/mypy

# The suite without its slow rehearsals (about 15 minutes on 2 cores): what CI runs.
test: lint
	$(BIN)/python -m pytest -q -m "not slow"

# The slow rehearsals alone: interrupt and resume, node loss and server outage, `ray up` over SSH.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -s -m slow

# The cluster rehearsal alone: PostgreSQL-backed MLflow server, a local multi-node Ray, injected faults.
rehearse: $(STAMP)
	$(BIN)/python -m pytest -q -s -m rehearsal tests/test_rehearsal.py

# The headline command on cluster/onprem.yaml: sshd on 127.0.0.1, ray up / submit / exec "ablate report" / down
# (as root; needs openssh-server, rsync and PostgreSQL's server binaries, which .ci/run installs).
cluster-rehearsal: $(STAMP)
	$(BIN)/python -m pytest -q -s -m cluster_rehearsal tests/test_cluster_rehearsal.py

clean:
	rm -rf runs .ablate_cache .ablate_sweeps mlflow.db
