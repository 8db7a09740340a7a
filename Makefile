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

# One test process per core and one more (the tests wait on their subprocesses and local servers about a fifth of
# the time: on 2 cores, 3 processes ran the suite in 20 % less time than 2), at most 8.
TEST_WORKERS ?= $(shell $(PY) -c "import os; n = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count(); print(min(8, (n or 1) + 1))")

test: $(BIN)/.installed
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

bench: $(BIN)/.installed
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(WORKDIR) .pytest_cache

.PHONY: install demo test bench clean
