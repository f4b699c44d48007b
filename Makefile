# Two entry points: `make run` (set up, then run the platform with the example model
# deployed) and `make test` (set up, then run every check and test).
# A controller running as root runs replicas as unprivileged users (README: Replica
# isolation), who must be able to read the interpreter: a system Python 3.11+ with venv is
# preferred to one under a private home (pyenv's in /root), else whatever python3 is.
PYTHON ?= $(shell /usr/bin/python3 -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' \
	2>/dev/null && echo /usr/bin/python3 || echo python3)
VENV := .venv
PY := $(VENV)/bin/python
BUF := node_modules/.bin/buf
STAMP := $(VENV)/.installed
# The dashboard (web/): built into web/dist by setup, served by the controller at /.
WEB := web/dist/index.html
WEB_SOURCES := $(shell find web/src web/index.html web/vite.config.ts web/tsconfig.json protos -type f \
	-not -path 'web/src/gen/*' 2>/dev/null)

.PHONY: setup run test generate check-generated lint clean web browser postgres-bin haproxy-bin

setup: $(STAMP) $(BUF) $(WEB)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv --clear $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,ray]'
	touch $(STAMP)

# The buf CLI (and the Node client example's packages) come from the npm registry;
# npm itself comes from Debian's packages when the machine has none.
$(BUF): package.json
	@command -v npm >/dev/null 2>&1 || { \
		SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		$$SUDO apt-get update && $$SUDO apt-get install -y nodejs npm; }
	npm install --no-audit --no-fund --loglevel=error
	touch $(BUF)

# Its typed client is generated from the protos (buf.gen.yaml, protoc-gen-es) before each
# build, type-checked, then bundled with every asset (no CDN).
$(WEB): $(BUF) buf.gen.yaml package.json $(WEB_SOURCES)
	rm -rf web/src/gen
	$(BUF) generate
	node_modules/.bin/tsc -p web/tsconfig.json
	node_modules/.bin/vite build web --logLevel warn

web: $(WEB)

# The dashboard's end-to-end tests drive Debian's chromium (Playwright never downloads one).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		$$SUDO apt-get update && $$SUDO apt-get install -y chromium; }

generate: $(STAMP)
	$(PY) scripts/generate.py

check-generated: $(STAMP)
	$(PY) scripts/generate.py --check

# buf breaking compares the protos with the main branch (a no-op on a clean clone of main;
# it catches a breaking change in the working tree before it lands).
lint: $(STAMP) $(BUF)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(BUF) lint
	@if git rev-parse --verify -q main >/dev/null; then $(BUF) breaking --against '.git#branch=main'; fi

# The tests run on SQLite and on a real PostgreSQL server that they start themselves
# (tests/pg_server.py). Its binaries come from Debian's packages when the machine has none;
# if they cannot be installed, the PostgreSQL half is skipped and pytest says why (-rs).
postgres-bin:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || { \
		SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		{ $$SUDO apt-get update && $$SUDO apt-get install -y postgresql; } || \
		echo "make: PostgreSQL could not be installed: the tests on PostgreSQL will be skipped"; }

# The native data plane's proxy (gateway/native/): HAProxy from Debian's packages. Without it
# `--data-plane auto` runs the Python data plane and the native tests are skipped.
haproxy-bin:
	@command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || { \
		SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		{ $$SUDO apt-get update && $$SUDO apt-get install -y --no-install-recommends haproxy; } || \
		echo "make: HAProxy could not be installed: the native data plane is unavailable"; }

test: setup browser check-generated lint postgres-bin haproxy-bin
	$(PY) -m pytest -q -rs

run: setup haproxy-bin
	$(PY) -m slipway up --example examples/echo

clean:
	rm -rf $(VENV) node_modules .slipway web/dist web/src/gen .artifacts

# Benchmarks print figures, never assert on timing (bench/README.md). The gateway
# benchmark drives load with h2load (package nghttp2-client), installed when missing.
.PHONY: bench bench-deps

bench-deps: setup
	$(PY) -m pip install --quiet -e '.[dev,ray,bench]'
	@command -v h2load >/dev/null 2>&1 || { \
		SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		$$SUDO apt-get update && $$SUDO apt-get install -y nghttp2-client; }

bench: setup bench-deps postgres-bin
	$(PY) bench/lifecycle.py
	$(PY) bench/gateway.py
	$(PY) bench/cold_start.py
	$(PY) bench/reload.py
	$(PY) bench/auth.py
	$(PY) bench/proxy_floor.py
	$(PY) bench/tls.py
	$(PY) bench/hooks.py
	$(PY) bench/logs.py
	$(PY) bench/metric_history.py
	$(PY) bench/failover.py
	$(PY) bench/async_queue.py
	$(PY) bench/rollout.py
