# Two entry points: `make run` (set up, then run the platform with the example model
# deployed) and `make test` (set up, then run every check and test).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BUF := node_modules/.bin/buf
STAMP := $(VENV)/.installed

.PHONY: setup run test generate check-generated lint clean

setup: $(STAMP) $(BUF)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(BUF): package.json
	npm install --no-audit --no-fund --loglevel=error
	touch $(BUF)

generate: $(STAMP)
	$(PY) scripts/generate.py

check-generated: $(STAMP)
	$(PY) scripts/generate.py --check

lint: $(BUF)
	$(BUF) lint

test: setup check-generated lint
	$(PY) -m pytest -q

run: setup
	$(PY) -m slipway up --example examples/echo

clean:
	rm -rf $(VENV) node_modules .slipway
