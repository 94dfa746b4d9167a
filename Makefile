# One entry point for people and CI: every target creates the environment it needs.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-quick bench env

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e '.[dev]'
	touch $@

demo: env
	$(PY) pipelines/main.py --name demo

test: env
	$(PY) -m pytest tests

test-quick: env
	$(PY) -m pytest -m "not slow" tests
