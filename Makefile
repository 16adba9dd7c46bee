PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up test lint typecheck proto bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

up: $(STAMP)
	$(BIN)/rivulet up

# Regenerates services/profiler/profile_pb2.py(i) from proto/profile.proto.
proto: $(STAMP)
	$(BIN)/python -m services.profiler.build_proto

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m services.profiler.build_proto --check

typecheck: $(STAMP)
	$(BIN)/mypy

# pytest exits 5 when it collects nothing: that is a failure here too.
test: lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider

# Figures, not assertions: raw limits of Redis/ClickHouse/PostgreSQL, then the pipeline.
# Pass options with ARGS, e.g. `make bench ARGS="--events 50000 --json bench.json"`.
bench: $(STAMP)
	$(BIN)/python -m bench.run $(ARGS)

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache
