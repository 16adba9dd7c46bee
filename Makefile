PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up test lint typecheck proto bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Installed pure first: mypyc type-checks what the compiled modules import, so it runs once the
# dependencies are in the venv (below).
$(STAMP): pyproject.toml setup.py | $(BIN)/python
	RIVULET_PURE_PYTHON=1 $(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# The mypyc-compiled modules (pyproject's [tool.rivulet] compiled) sit beside their sources, and
# Python imports the compiled one first: rebuild them whenever a source changes. Without a C
# compiler, or with RIVULET_PURE_PYTHON=1, this builds nothing.
COMPILED_STAMP := $(VENV)/.compiled
COMPILED := $(shell $(PYTHON) -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['tool']['rivulet']['compiled'])")

# From scratch: mypyc's incremental state in build/ went stale when a class moved from one
# compiled module to another, and the C it generated no longer compiled.
$(COMPILED_STAMP): $(STAMP) $(COMPILED)
	rm -rf build
	$(BIN)/python setup.py --quiet build_ext --inplace
	touch $(COMPILED_STAMP)

up: $(STAMP) $(COMPILED_STAMP)
	$(BIN)/rivulet up

# Regenerates services/profiler/profile_pb2.py(i) from proto/profile.proto.
proto: $(STAMP)
	$(BIN)/python -m services.profiler.build_proto

lint: $(STAMP) $(COMPILED_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m services.profiler.build_proto --check

typecheck: $(STAMP) $(COMPILED_STAMP)
	$(BIN)/mypy

# pytest exits 5 when it collects nothing: that is a failure here too.
test: lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider

# Figures, not assertions: raw limits of Redis/ClickHouse/PostgreSQL, then the pipeline.
# Pass options with ARGS, e.g. `make bench ARGS="--events 50000 --json bench.json"`.
bench: $(STAMP) $(COMPILED_STAMP)
	$(BIN)/python -m bench.run $(ARGS)

clean:
	find . -name '*.cpython-*.so' -not -path './.venv/*' -delete
	rm -rf $(VENV) var build .mypy_cache .ruff_cache
