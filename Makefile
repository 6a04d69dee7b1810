# The two commands of the README: `make run` (the appliance on embedded defaults) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test setup test-setup system-packages bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

setup: $(BIN)/python
	$(BIN)/pip install --quiet -e .

run: setup
	$(BIN)/confmeet serve

# Debian packages the end-to-end tests drive (a real Chromium, wrk for benchmarks).
system-packages:
	@if [ "$$(id -u)" = 0 ] && ! command -v chromium >/dev/null; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium wrk; fi

test-setup: $(BIN)/python system-packages
	$(BIN)/pip install --quiet -e '.[test]'

test: test-setup
	$(BIN)/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

bench: setup
	$(BIN)/python benchmarks/api_bench.py
