# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# torch is installed first and pinned to the CPU wheel: letting another package pull in plain
# `torch` downloads a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0

.PHONY: demo test lint install browser-deps clean

$(BIN)/voxclass: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[train,dev,ray]'
	touch $@

install: $(BIN)/voxclass

demo: install
	$(BIN)/voxclass demo --output demo

lint: install
	$(BIN)/ruff check src tests benchmarks

# The browser test drives Debian's chromium through chromedriver; it fails (never skips) without.
browser-deps:
	command -v chromedriver >/dev/null || (apt-get update && apt-get install -y chromium chromium-driver)

test: install lint browser-deps
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) demo build
