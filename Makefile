# The two README commands: `make run` (environment + dvc repro on the toy data) and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# dvc.yaml stages call `python -m ...`: the venv must come first on PATH
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test env

$(BIN)/activate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $(BIN)/activate

env: $(BIN)/activate

# `dvc exp run` (not `dvc repro`): the result is an experiment, so later `dvc exp run`s do not replace
# it in `dvc exp show` and `train.report --experiments`; outside a git checkout, a plain `dvc repro`
run: env
	if git rev-parse -q --verify HEAD >/dev/null 2>&1; then dvc exp run; else dvc repro; fi
	python -m train.report --print
	@echo "gallery: results/infer/index.html (test episodes and failure cases, one panel each)"

test: env
	@python -m pytest -q; status=$$?; \
	if [ $$status -eq 5 ]; then echo "FAILED: pytest collected no tests (exit 5)" >&2; fi; \
	exit $$status
