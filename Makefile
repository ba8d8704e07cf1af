# The two newcomer commands: `make run` and `make test`. Both set up .venv first (idempotent).
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU box: torch==2.13.0 resolves to the local CPU build. On a GPU box: `make setup TORCH=torch` (CUDA wheels).
TORCH  ?= torch==2.13.0
OUT    ?= runs/default

.PHONY: setup run test lint bench
setup: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[dev]'
	$(VENV)/bin/afprobe models fetch smollm2-135m-instruct
	touch $@

run: setup
	$(VENV)/bin/afprobe run default --out $(OUT)

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/python -m pytest

bench: setup
	$(VENV)/bin/python -m benchmarks
