# Chirp: `make up` starts the whole stack, `make test` runs every test suite.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PY_VERSION := python3.11
VENV := .venv
PY := $(VENV)/bin/python
SITE := $(VENV)/lib/$(PY_VERSION)/site-packages
BUF := .deps/npm/node_modules/.bin/buf
BUF_VERSION := 1.75.0
PROTOS := $(shell find protos -name '*.proto' | sort)
# Internal services (*_internal.proto) are not part of the public REST API.
PUBLIC_PROTOS := $(filter-out %_internal.proto,$(PROTOS))
PROTO_INCLUDES := -I protos -I $(SITE)
PROTOC_GEN_OPENAPI_VERSION := v2.32.0
PROTOC_GEN_OPENAPI := .deps/go/bin/protoc-gen-openapiv2
OPENAPI_CONFIG := protos/openapi.yaml
OPENAPI_OPTS := allow_merge=true,merge_file_name=chirp,json_names_for_fields=false,ignore_go_package_option=true,openapi_configuration=$(OPENAPI_CONFIG)
OUR_CODE := common graph_svc tweet_svc feed_svc rank_svc infra envoy tests bench

.PHONY: help up down status clean proto check lint test test-unit test-cluster chaos deps seed bench bench-full bench-tools capacity

help:
	@echo "make up      start the whole stack (installs what it needs); CHIRP_TOPOLOGY=cluster make up for 3+3+6 store nodes"
	@echo "make test    start the (single-node) stack if needed, run unit, integration and e2e tests"
	@echo "make test-cluster  the tests that need the cluster topology (starts it if needed)"
	@echo "make chaos   fault suite on the cluster topology under load; report in docs/RELIABILITY.md"
	@echo "make check   lint (ruff, mypy, buf) and generated-code freshness"
	@echo "make down    stop everything make up started (data is kept)"
	@echo "make clean   stop and wipe all state (data, logs, keys)"
	@echo "make seed    load a synthetic social graph (SEED_ARGS='--users 10000 --edges 200000' for a small one)"
	@echo "make bench   quick benchmark run (a few minutes; seeds a small graph when there is none); make bench-full for all rates and fan-out strategies"
	@echo "make capacity  docs/CAPACITY.md: the seeds' load priced from the latest bench results (no stack needed)"
	@echo "make proto   regenerate generated/ (Python stubs, descriptor set, OpenAPI) from protos/"

# ---- installation ------------------------------------------------------------

$(VENV)/.stamp: requirements.lock
	test -x $(PY) || $(PY_VERSION) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.lock
	printf '%s\n%s\n' "$(CURDIR)" "$(CURDIR)/generated" > $(SITE)/chirp.pth
	touch $@

.deps/apt.stamp:
	@mkdir -p .deps
	@if ! command -v redis-server >/dev/null || ! command -v prometheus >/dev/null; then \
		apt-get install -y -q redis-server prometheus >/dev/null 2>&1 \
		|| (apt-get update -q >/dev/null && apt-get install -y -q redis-server prometheus >/dev/null); \
	fi
	touch $@

$(PROTOC_GEN_OPENAPI):
	GOBIN=$(CURDIR)/$(@D) go install github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-openapiv2@$(PROTOC_GEN_OPENAPI_VERSION)

$(BUF):
	mkdir -p .deps/npm
	npm install --silent --no-audit --no-fund --prefix .deps/npm @bufbuild/buf@$(BUF_VERSION)

deps: $(VENV)/.stamp .deps/apt.stamp

# ---- the stack ---------------------------------------------------------------

up: deps
	$(PY) -m infra.stack up

down:
	@if [ -x $(PY) ]; then $(PY) -m infra.stack down; fi

status: deps
	$(PY) -m infra.stack status

clean: down
	rm -rf .state

# ---- code generation and checks --------------------------------------------

proto: $(VENV)/.stamp $(PROTOC_GEN_OPENAPI)
	rm -rf generated && mkdir -p generated
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m grpc_tools.protoc $(PROTO_INCLUDES) \
		--python_out=generated --grpc_python_out=generated \
		--mypy_out=generated --mypy_grpc_out=generated $(PROTOS)
	$(PY) -m grpc_tools.protoc $(PROTO_INCLUDES) --include_imports --include_source_info \
		--descriptor_set_out=generated/chirp.binpb $(PROTOS) google/rpc/status.proto google/rpc/error_details.proto
	mkdir -p generated/openapi
	$(PY) -m grpc_tools.protoc $(PROTO_INCLUDES) --plugin=protoc-gen-openapiv2=$(PROTOC_GEN_OPENAPI) \
		--openapiv2_out=generated/openapi --openapiv2_opt=$(OPENAPI_OPTS) $(PUBLIC_PROTOS)

lint: $(VENV)/.stamp $(BUF)
	$(VENV)/bin/ruff check $(OUR_CODE)
	$(VENV)/bin/ruff format --check $(OUR_CODE)
	$(VENV)/bin/mypy $(OUR_CODE)
	$(BUF) lint generated/chirp.binpb --path chirp --config protos/buf.yaml

check: $(VENV)/.stamp
	$(MAKE) --no-print-directory proto
	@if [ -n "$$(git status --porcelain -- generated)" ]; then \
		echo "generated/ is stale: run 'make proto' and commit the result"; git status --short -- generated; exit 1; fi
	$(MAKE) --no-print-directory lint
	@echo "check: OK"

# ---- tests -------------------------------------------------------------------

# Tests run against a stack started with quick settings: a low celebrity
# threshold (with a one-follower band under it) and a fast trending job, so
# these behaviours show within seconds; every test account signs up from
# 127.0.0.1, so the per-address sign-up limit is off.
TEST_ENV := CHIRP_CELEBRITY_THRESHOLD=3 CHIRP_CELEBRITY_DEMOTE_BELOW=2 CHIRP_FOLLOWING_LIST_LIMIT=25 CHIRP_RANK_INTERVAL_SECONDS=2 CHIRP_CELEBRITY_CACHE_SECONDS=1 CHIRP_LIMIT_SIGNUPS=0

test: deps
	CHIRP_TOPOLOGY=single $(TEST_ENV) $(PY) -m infra.stack up
	CHIRP_TOPOLOGY=single $(TEST_ENV) $(PY) -m pytest tests -m "not cluster" --durations=15

# The cluster topology: its own tests, then the fault suite (make chaos).
CLUSTER_ENV := CHIRP_TOPOLOGY=cluster $(TEST_ENV)
CHAOS_ARGS ?=

test-cluster: deps
	$(CLUSTER_ENV) $(PY) -m infra.stack up
	$(CLUSTER_ENV) $(PY) -m pytest tests -m cluster --durations=5

chaos: deps
	$(CLUSTER_ENV) $(PY) -m infra.stack up
	$(CLUSTER_ENV) $(PY) -m infra.chaos $(CHAOS_ARGS)

test-unit: $(VENV)/.stamp
	$(PY) -m pytest tests/unit

# ---- benchmarks --------------------------------------------------------------

# The edge's rate limits are raised so they do not cap what is measured.
# Load comes from a few hundred seeded users: the per-user limits (README, "Security") are off.
BENCH_ENV := CHIRP_EDGE_DEFAULT_RPS=100000 CHIRP_EDGE_POST_RPS=20000 CHIRP_EDGE_LOGIN_RPS=2000 CHIRP_LIMIT_POSTS=0 CHIRP_LIMIT_LIKES=0 CHIRP_LIMIT_FOLLOWS=0 CHIRP_LIMIT_SIGNUPS=0
GO_BIN := .deps/go/bin
LOADGEN := $(GO_BIN)/loadgen
GHZ := $(GO_BIN)/ghz
GHZ_VERSION := v0.120.0
SEED_ARGS ?=
BENCH_ARGS ?=

$(LOADGEN): bench/loadgen/main.go bench/loadgen/go.mod
	cd bench/loadgen && go build -o $(CURDIR)/$@ .

$(GHZ):
	GOBIN=$(CURDIR)/$(GO_BIN) go install github.com/bojand/ghz/cmd/ghz@$(GHZ_VERSION)

bench-tools: $(LOADGEN) $(GHZ)

seed: deps bench-tools
	$(BENCH_ENV) $(PY) -m infra.stack up
	$(PY) -m bench.seed $(SEED_ARGS)

# Without a seeded graph the bench seeds one: SEED_ARGS if given, else a small one (bench/run.py).
BENCH_SEED = $(if $(SEED_ARGS),--seed-args "$(SEED_ARGS)")

bench: deps bench-tools
	$(BENCH_ENV) $(PY) -m infra.stack up
	$(BENCH_ENV) $(PY) -m bench.run --quick $(BENCH_SEED) $(BENCH_ARGS)

bench-full: deps bench-tools
	$(BENCH_ENV) $(PY) -m infra.stack up
	$(BENCH_ENV) $(PY) -m bench.run --strategies $(BENCH_SEED) $(BENCH_ARGS)

# Report only: measures bytes per timeline entry on the stack when it is up, else
# reuses the last measurement or a named assumption (CAPACITY_ARGS=--no-gather skips it).
CAPACITY_ARGS ?=

capacity: $(VENV)/.stamp
	$(PY) -m bench.capacity $(CAPACITY_ARGS)
