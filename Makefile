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

.PHONY: setup run test generate check-generated lint clean

setup: $(STAMP) $(BUF)

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

test: setup check-generated lint
	$(PY) -m pytest -q

run: setup
	$(PY) -m slipway up --example examples/echo

clean:
	rm -rf $(VENV) node_modules .slipway

# Benchmarks print figures, never assert on timing (bench/README.md). The gateway
# benchmark drives load with h2load (package nghttp2-client), installed when missing.
.PHONY: bench bench-deps

bench-deps: setup
	$(PY) -m pip install --quiet -e '.[dev,ray,bench]'
	@command -v h2load >/dev/null 2>&1 || { \
		SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		$$SUDO apt-get update && $$SUDO apt-get install -y nghttp2-client; }

bench: setup bench-deps
	$(PY) bench/lifecycle.py
	$(PY) bench/gateway.py
	$(PY) bench/cold_start.py
	$(PY) bench/reload.py
	$(PY) bench/auth.py
	$(PY) bench/proxy_floor.py
	$(PY) bench/tls.py
