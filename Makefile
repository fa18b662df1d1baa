# Conclave: `make run` starts a local cluster, `make test` runs the whole suite.
# Both install what they need on a fresh Debian machine with only Python.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
LOAD_STAMP := $(VENV)/.installed-load

.PHONY: run test lint protos deps clean system-deps native-deps test-system-deps bench fuzz fuzz-native loadtest

# etcd for the cluster and the integration tests.
system-deps:
	@command -v etcd >/dev/null 2>&1 || { \
		echo "installing Debian etcd-server (etcd not on PATH)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client; }

# libsrtp2's headers for the relay's native media path, which the package build
# compiles (setup.py, docs/native.md).
native-deps:
	@test -f /usr/include/srtp2/srtp.h -a -f /usr/include/openssl/evp.h || { \
		echo "installing Debian libsrtp2-dev and libssl-dev (the relay's native path links libsrtp2 and libcrypto)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libsrtp2-dev libssl-dev; }

# Debian's Chromium for the browser tests (tests/e2e), which Playwright drives at
# /usr/bin/chromium (never `playwright install`); Debian's prometheus for
# tests/monitoring (promtool checks the alert rules, a real Prometheus scrapes a
# cluster on ports of its own; without recommends: no node exporter).
test-system-deps: system-deps
	@test -x /usr/bin/chromium || { \
		echo "installing Debian chromium (/usr/bin/chromium missing, tests/e2e need it)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	@command -v promtool >/dev/null 2>&1 || { \
		echo "installing Debian prometheus (promtool missing, tests/monitoring need it)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends prometheus; }

NATIVE_SOURCES := setup.py $(wildcard relay/native/*.c relay/native/*.h)

$(STAMP): pyproject.toml $(NATIVE_SOURCES) | native-deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

$(TEST_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install -q -e '.[test]'
	touch $@

deps: system-deps $(STAMP)

# Extra flags for `conclave dev`, e.g. make run DEV_ARGS="--relays 3"
DEV_ARGS ?=

run: deps
	$(BIN)/conclave dev $(DEV_ARGS)

test: test-system-deps $(TEST_STAMP)
	$(BIN)/python -m pytest -q

# The packet fuzzer for longer than `make test` runs it, on every core, with a fresh
# seed unless FUZZ_SEED is given: make fuzz FUZZ_INPUTS=5000000 FUZZ_SEED=42
FUZZ_INPUTS ?= 1000000
FUZZ_SEED ?=

fuzz: $(TEST_STAMP)
	$(BIN)/python -m tests.fuzz --inputs $(FUZZ_INPUTS) $(if $(FUZZ_SEED),--seed $(FUZZ_SEED))

# The native packet parsers (relay/native/*.c) under AddressSanitizer and UBSan
# (docs/native.md, step 5): a sanitized copy of relay._native is built into
# build/asan (never over the tree's relay/_native*.so) and tests/fuzz/native.py
# loads it in place of the tree's, one process, one seed (default 1):
# make fuzz-native FUZZ_INPUTS=1000000 FUZZ_SEED=7
ASAN_DIR := build/asan
ASAN_SO := $(ASAN_DIR)/_native.so
SANITIZE := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

$(ASAN_SO): $(NATIVE_SOURCES) | native-deps $(STAMP)
	mkdir -p $(ASAN_DIR)
	gcc -std=c11 -O1 -g -Wall -Wextra $(SANITIZE) -fPIC -shared \
		-I"$$($(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['include'])")" \
		relay/native/module.c relay/native/srtp.c relay/native/srtp_send.c relay/native/crypto.c relay/native/engine.c \
		relay/native/forward.c relay/native/reception.c -lsrtp2 -lcrypto -lm -o $@

fuzz-native: $(TEST_STAMP) $(ASAN_SO)
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
		$(BIN)/python -m tests.fuzz.native --native $(ASAN_SO) \
		--inputs $(FUZZ_INPUTS) --seed $(if $(FUZZ_SEED),$(FUZZ_SEED),1)

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

protos: $(TEST_STAMP)
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. \
		protos/rooms.proto protos/relay.proto protos/grant.proto protos/link.proto
	rm -f protos/grant_pb2_grpc.py

bench: deps
	$(BIN)/python bench/forward.py

$(LOAD_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install -q -e '.[load]'
	touch $@

# locust against a local cluster's control plane (loadtests/run.py): one bounded run
# per user count, CSV files and a summary under loadtests/results/, e.g.
# make loadtest LOAD_USERS=10,20,40 LOAD_TIME=60s
LOAD_USERS ?= 20
LOAD_TIME ?= 60s
LOAD_ARGS ?=

loadtest: system-deps $(LOAD_STAMP)
	$(BIN)/python -m loadtests.run --users $(LOAD_USERS) --time $(LOAD_TIME) $(LOAD_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build relay/_native_*.so
