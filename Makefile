# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv if missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Development machines and CI carry a copy of Tiny Shakespeare beside the checkout and
# have no internet; elsewhere the corpus is downloaded (and checksummed) on first use.
SHARED_DATA := $(wildcard ../shared/data/tinyshakespeare.txt)
DATA_FLAG := $(if $(SHARED_DATA),--data $(SHARED_DATA),)

.PHONY: demo test install dev bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
dev: $(VENV)/.installed-dev

# Train the Shakespeare LM with the default CPU preset, then print a sample.
demo: $(VENV)/.installed
	rm -rf runs/demo
	$(BIN)/scratchformer train lm --out runs/demo $(DATA_FLAG)
	$(BIN)/scratchformer sample runs/demo --prompt "ROMEO:" --tokens 400

# Two processes, a test file each at a time: much of the suite is compiling, which uses one
# core, so two workers keep both busy (measured in BENCHMARKS.md,
# "Decisions: the test suite").
test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -n 2 --dist loadfile

bench: $(VENV)/.installed
	$(BIN)/scratchformer bench

clean:
	rm -rf $(VENV) runs .pytest_cache
