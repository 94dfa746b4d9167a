# One entry point for people and CI: every target creates the environment it needs.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-quick lint bench env gpu-check gpu-check-vendor

env: $(VENV)/.installed

# trainer.ops: DeepSpeed would compile its CPU comm op inside the first training (a minute of silence).
# constraints.txt: the versions that produced the README's table (the file says why and how to renew it).
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -c constraints.txt -e '.[dev]'
	$(PY) -m trainer.ops
	touch $@

# The README's table is this command's report: the quick profile, the shipped teacher (demo/assets), three
# student seeds (from a fresh clone on the 2-core box, the environment aside: 21.7 and 22.9 minutes measured
# on 2026-12-03, about 14 projected for a day as fast as 2026-12-02; about 4 more with --teacher train).
# `make demo SEEDS=0`: one seed, its row in BENCHMARKS.md ("A shipped teacher"), in about half that.
# The longer default profile: pipelines/main.py --name NAME
SEEDS ?= 0,1,2
demo: env
	$(PY) pipelines/main.py --quick --name demo --seeds $(SEEDS)

# The layer contract and ruff's small rule set (pyproject.toml) fail the build like a test does.
lint: env
	cd $(CURDIR) && $(VENV)/bin/lint-imports && $(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest tests

test-quick: lint
	$(PY) -m pytest -m "not slow" tests

# The GPU machine lacks open_clip and its pure-Python dependencies: copy them where the check finds
# them (bench/out/vendor, ignored by git; carry it). On that machine: python3 bench/gpu_check.py
gpu-check-vendor: env
	$(PY) bench/gpu_check.py --vendor bench/out/vendor

gpu-check: gpu-check-vendor
	$(PY) bench/gpu_check.py
