# Two commands for a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo test test-fast bench bench-quick clean

$(BIN)/activate:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# CPU torch first, so nothing below can pull a CUDA build.
	$(BIN)/pip install torch==2.13.0

$(VENV)/.installed: $(BIN)/activate pyproject.toml constraints.txt
	$(BIN)/pip install -c constraints.txt -e ".[dev,ray]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/pipeline demo

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# Benchmarks need a demo build (models + sample data) in the repo root; they write
# benchmarks/results.json (about 30-40 min on 2 cores; bench-quick: a few minutes).
bench: install
	test -f models/reranker/manifest.json || $(BIN)/pipeline demo
	$(BIN)/python benchmarks/run_all.py --workdir .

bench-quick: install
	test -f models/reranker/manifest.json || $(BIN)/pipeline demo
	$(BIN)/python benchmarks/run_all.py --workdir . --quick --out benchmarks/results-quick.json

clean:
	rm -rf $(VENV) indexes/default models runs
