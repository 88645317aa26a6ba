# Two commands for a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= config/ctrackd.example.yaml

.PHONY: run test venv test-deps browser asterisk bench lint clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

venv: $(BIN)/activate
	$(BIN)/pip install --quiet -e .

run: venv
	mkdir -p var
	$(BIN)/ctrackd run -c $(CONFIG)

test-deps: $(BIN)/activate
	$(BIN)/pip install --quiet -e '.[test]'

# Debian's chromium for the browser tests (apt-get, as root on CI; a no-op when present).
browser:
	bash scripts/install-browser.sh

# A real Asterisk 22 (Debian sid's package in var/asterisk-root) for
# tests/real_asterisk/. Should it fail (no network, sid broken that day), the
# suite still runs and those tests say they were skipped and why.
asterisk:
	bash scripts/install-asterisk.sh || echo "make: no real Asterisk, tests/real_asterisk/ will be skipped" >&2

test: test-deps browser asterisk
	$(BIN)/python -m pytest

bench: test-deps
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) var build *.egg-info
