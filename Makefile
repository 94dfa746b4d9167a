# One entry point for people and CI: every target creates the environment it needs.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-quick lint bench env

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e '.[dev]'
	touch $@

demo: env
	$(PY) pipelines/main.py --name demo

# The layer contract and ruff's small rule set (pyproject.toml) fail the build like a test does.
lint: env
	cd $(CURDIR) && $(VENV)/bin/lint-imports && $(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest tests

test-quick: lint
	$(PY) -m pytest -m "not slow" tests
