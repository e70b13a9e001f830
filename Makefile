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

.PHONY: all install tools generate buf-lint buf-breaking proto-baseline migrate run test test-fast bench clean citus-test citus-distribute citus-bench

all: test

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench,embedded,tracing]'
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

# Citus (tests/citus/, not collected by `make test`; run by .ci/run after it): builds and installs
# Citus into the machine's PostgreSQL 15 if needed (as root, once per machine), starts a
# coordinator and 2 workers in a temporary folder, runs tests/citus/ (distribution, routing, the
# fault suite on the cluster, a worker down, tenant moves) and then tests/e2e/ and tests/races/
# (CITUS_E2E: other paths) against them, stops them. Options through PYTEST_ARGS.
citus-test: $(STAMP)
	bash tests/citus/run.sh $(PYTEST_ARGS)

# The benchmark's scenarios on the machine's Postgres and on a local Citus cluster, side by side
# (bench/citus.py; options through CITUS_BENCH_ARGS, e.g. "--people 100000 --rounds 2").
citus-bench: $(STAMP)
	$(BIN)/python -m bench.citus $(CITUS_BENCH_ARGS)

# On a Citus coordinator (DATABASE_URL): the migrations, then every table distributed by
# workspace_id (service/db/citus.py; idempotent). Serve it with DB_PLAN_CACHE_MODE=auto.
citus-distribute: $(STAMP)
	$(BIN)/python -m service.db.citus migrate

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)
	$(BIN)/python -m bench.change_log $(CHANGE_LOG_BENCH_ARGS)
	$(BIN)/python -m bench.bulk_import $(BULK_IMPORT_BENCH_ARGS)
	$(BIN)/python -m bench.fairness $(FAIRNESS_BENCH_ARGS)

clean:
	rm -rf $(VENV) .tools .pgdata .pytest_cache .coverage

# --- Clients in other languages (README.md, "Clients in other languages") ----------------------
# `make clients` generates and builds the Go, TypeScript and Java clients of clients/; each runs
# the same scenario against a server (tests/ecosystem/test_clients.py runs them). Generated code
# and builds are git-ignored. Go and Java come from Debian's packages, installed here when
# missing (protoc, protoc-gen-go, protoc-gen-go-grpc, the Go gRPC and protobuf sources under
# /usr/share/gocode, grpc-java's plugin and jars under /usr/share/java); TypeScript from the npm
# registry into clients/ts/node_modules (ts-proto, @grpc/grpc-js, typescript, as locked).
CLIENT_DEBS := protobuf-compiler golang-go protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev \
  golang-google-protobuf-dev golang-google-genproto-dev golang-github-golang-protobuf-1-5-dev \
  openjdk-17-jdk-headless protobuf-compiler-grpc-java-plugin libgrpc-java libprotobuf-java libguava-java \
  libnetty-java libperfmark-java libgoogle-gson-java liberror-prone-java libgeronimo-annotation-1.3-spec-java
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
GO_CLIENT := clients/go/build/identity-client
GO_ENV := GO111MODULE=off GOPATH=$(CURDIR)/clients/go/build/gopath:/usr/share/gocode \
  GOCACHE=$(CURDIR)/clients/go/build/cache GOFLAGS= GOPROXY=off
TS_STAMP := clients/ts/node_modules/.installed
TS_CLIENT := clients/ts/dist/src/scenario.js
JAVA_CLIENT := clients/java/build/identity-client.jar
JAVA_JARS := $(patsubst %,/usr/share/java/%.jar,grpc-api grpc-context grpc-core grpc-netty grpc-protobuf \
  grpc-protobuf-lite grpc-stub protobuf guava perfmark-api gson error_prone_annotations \
  geronimo-annotation-1.3-spec netty-buffer netty-codec netty-codec-http netty-codec-http2 netty-codec-socks \
  netty-common netty-handler netty-handler-proxy netty-resolver netty-transport netty-transport-native-unix-common)
JAVA_PROTOS := protos/identity/v1/identity.proto protos/google/rpc/status.proto protos/google/rpc/error_details.proto

.PHONY: clients client-debs clients-go clients-ts clients-java clients-clean

clients: clients-go clients-ts clients-java

# Installs the Debian packages above that are missing (apt-get; as root or through sudo).
client-debs:
	@missing=$$(for p in $(CLIENT_DEBS); do \
	  dpkg-query -W -f='$${db:Status-Status}\n' $$p 2>/dev/null | grep -qx installed || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi

clients-go: $(GO_CLIENT)

# GOPATH mode: the generated package goes where its go_package says, beside Debian's sources.
$(GO_CLIENT): clients/go/main.go $(PROTOS) | client-debs
	rm -rf clients/go/build/gopath && mkdir -p clients/go/build/gopath/src
	protoc -I protos --go_out=clients/go/build/gopath/src --go-grpc_out=clients/go/build/gopath/src \
	  protos/identity/v1/identity.proto
	cd clients/go && $(GO_ENV) go build -o build/identity-client .

clients-ts: $(TS_CLIENT)

$(TS_STAMP): clients/ts/package.json clients/ts/package-lock.json
	cd clients/ts && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(TS_CLIENT): $(TS_STAMP) clients/ts/src/scenario.ts clients/ts/tsconfig.json $(PROTOS) | client-debs
	rm -rf clients/ts/gen clients/ts/dist && mkdir -p clients/ts/gen
	cd clients/ts && npm run -s generate && npm run -s build

clients-java: $(JAVA_CLIENT)

# A jar whose manifest names Debian's jars (Class-Path), so `java -jar` runs it.
$(JAVA_CLIENT): $(shell find clients/java/src -name '*.java') $(JAVA_PROTOS) | client-debs
	rm -rf clients/java/gen clients/java/build && mkdir -p clients/java/gen clients/java/build/classes
	protoc -I protos --plugin=protoc-gen-grpc-java=/usr/bin/grpc_java_plugin \
	  --java_out=clients/java/gen --grpc-java_out=clients/java/gen $(JAVA_PROTOS)
	javac -nowarn -d clients/java/build/classes -cp $(subst $(eval) ,:,$(strip $(JAVA_JARS))) \
	  $$(find clients/java/gen clients/java/src -name '*.java')
	{ echo "Main-Class: com.identityservice.client.Scenario"; echo "Class-Path: "; \
	  for jar in $(JAVA_JARS); do echo "  $$jar"; done; } > clients/java/build/manifest.txt
	jar --create --file $@ --manifest clients/java/build/manifest.txt -C clients/java/build/classes .

clients-clean:
	rm -rf clients/go/build clients/ts/node_modules clients/ts/gen clients/ts/dist clients/java/gen clients/java/build
