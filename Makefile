# spikelight: set-up and common jobs. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# pip install, done by uv with pip's settings when it can (2-5x faster), pip otherwise (scripts/install.py)
INSTALL := $(PY) scripts/install.py
# torch/torchvision pins that install from the local wheel cache on the dev machines;
# override on other machines, e.g. `make TORCH_SPEC="torch torchvision" test`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
DEMO_CONFIG ?= experiments/svl/synthetic.yaml
PYTEST_ARGS ?=
# pytest-xdist workers for `make test`: one per core, at most 4 (each holds torch, ~1-2 GB); 0 = in-process
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ "$$n" -gt 4 ] && n=4; [ "$$n" -lt 2 ] && n=0; echo $$n)
PYTEST_PAR := -n $(TEST_WORKERS) --dist loadfile

.PHONY: venv install install-svl install-lvc install-dev demo demo-lvc test test-fast test-slow test-all bench lint clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

$(VENV)/.torch: | $(VENV)/bin/python
	$(PIP) install $(TORCH_SPEC)
	touch $@

# base install (every method); the extras add one method's packages: .[svl] .[events] .[lvc] .[sparse]
$(VENV)/.installed: setup.cfg pyproject.toml $(VENV)/.torch
	$(INSTALL) -e .
	touch $@

$(VENV)/.installed-svl: setup.cfg pyproject.toml $(VENV)/.torch
	$(INSTALL) -e ".[svl]"
	touch $@ $(VENV)/.installed

$(VENV)/.installed-lvc: setup.cfg pyproject.toml $(VENV)/.torch
	$(INSTALL) -e ".[lvc]"
	touch $@ $(VENV)/.installed

# [dev] = every extra (spconv's CPU build) + the test tools
$(VENV)/.installed-dev: setup.cfg pyproject.toml $(VENV)/.torch
	$(INSTALL) -e ".[dev]"
	touch $@ $(VENV)/.installed $(VENV)/.installed-svl $(VENV)/.installed-lvc

venv: $(VENV)/bin/python
install: $(VENV)/.installed
install-svl: $(VENV)/.installed-svl
install-lvc: $(VENV)/.installed-lvc
install-dev: $(VENV)/.installed-dev

# SVL end to end on the embedded synthetic triplets: pretrain, zero-shot, Rep-VLI export, energy report
demo: install-svl
	VENV=$(VENV) DEMO_CONFIG=$(DEMO_CONFIG) bash scripts/demo.sh

# LVC on the synthetic videos: base VLM trained whole, alignment-layer tuning, LVC vs sparse sampling table
demo-lvc: install-lvc
	VENV=$(VENV) bash scripts/demo_lvc.sh

# the default suite (under 10 minutes on 2 cores, one pytest-xdist worker per core); tests marked `slow` run with `make test-slow` / `test-all`
test: install-dev
	WANDB_MODE=$${WANDB_MODE:-offline} $(PY) -m pytest -q -m "not slow" $(PYTEST_PAR) --durations=15 $(PYTEST_ARGS)

test-slow: install-dev
	WANDB_MODE=$${WANDB_MODE:-offline} $(PY) -m pytest -q -m slow $(PYTEST_PAR) --durations=15 $(PYTEST_ARGS)

test-all: install-dev
	WANDB_MODE=$${WANDB_MODE:-offline} $(PY) -m pytest -q $(PYTEST_PAR) --durations=15 $(PYTEST_ARGS)

test-fast: test

bench: install-dev
	@for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

lint: install-dev
	$(VENV)/bin/ruff check src datamodules callbacks tests benchmarks

clean:
	rm -rf runs build *.egg-info .pytest_cache
