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

# Debian packages the tests drive for real: Chromium, Docker Engine, debootstrap (image
# stand-ins), coturn, tmux, wrk for the benchmarks, espeak-ng (speech for the captions), and
# ffmpeg (ffprobe checks recordings).
SYSTEM_PACKAGES := chromium:chromium docker.io:dockerd debootstrap:debootstrap coturn:turnserver \
                   tmux:tmux wrk:wrk espeak-ng:espeak-ng ffmpeg:ffprobe
system-packages:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do \
		command -v $${pair#*:} >/dev/null || missing="$$missing $${pair%%:*}"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "install as root:$$missing" >&2; exit 1; fi; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; fi

test-setup: $(BIN)/python system-packages
	$(BIN)/pip install --quiet -e '.[test]'
	# silero-vad's ONNX weights only: its torch requirement is for its own (unused) PyTorch path.
	$(BIN)/pip install --quiet --no-deps 'silero-vad>=6,<7'

test: test-setup
	$(BIN)/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

bench: setup
	$(BIN)/python benchmarks/api_bench.py
