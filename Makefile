# Two commands for a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= config/ctrackd.example.yaml

.PHONY: run test venv test-deps browser bench lint clean

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

test: test-deps browser
	$(BIN)/python -m pytest

bench: test-deps
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) var build *.egg-info
