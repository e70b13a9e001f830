# Every target sets itself up: the virtualenv is created and filled on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTOS := $(shell find protos -name '*.proto')

.PHONY: all install generate migrate run test test-fast bench clean

all: test

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench,embedded]'
	touch $(STAMP)

install: $(STAMP)

# protoc output is committed; regenerate after editing protos/.
generate: $(STAMP)
	$(BIN)/python -m service.runtime.codegen generated

migrate: $(STAMP)
	$(BIN)/python -m service.runtime.server --migrate-only

run: $(STAMP)
	$(BIN)/python -m service.runtime.server --migrate

test: $(STAMP)
	$(BIN)/python -m pytest --cov=service --cov-report=term $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pgdata .pytest_cache .coverage
