# `make demo` runs the whole pipeline on the synthetic kitchen; `make test` runs the test suite.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WORKDIR ?= leap-work

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/leap demo --workdir $(WORKDIR)

test: $(BIN)/.installed
	$(BIN)/python -m pytest -n auto --maxprocesses 8 --dist loadfile

bench: $(BIN)/.installed
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(WORKDIR) .pytest_cache

.PHONY: install demo test bench clean
