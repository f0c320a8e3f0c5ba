# Every target bootstraps .venv from this repo's own files first (idempotent: redone only when
# pyproject.toml or constraints.txt change). torch goes in first so nothing pulls a CUDA build.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.maas-installed
PIP := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt
PYTEST_ARGS ?=

.PHONY: venv up test bench protos lint

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[models,ray,ops,dev]'
	touch $@

venv: $(STAMP)

up: $(STAMP)
	$(VENV)/bin/maas models export-tokenizer --if-missing
	$(VENV)/bin/maas up

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(VENV)/bin/maas models export-tokenizer --if-missing
	$(VENV)/bin/maas bench

protos: $(STAMP)
	$(PY) scripts/gen_protos.py

lint: $(STAMP)
	$(VENV)/bin/ruff check services scripts tests
	$(VENV)/bin/ruff format --check services scripts tests
