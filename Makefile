PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv demo test bench schemas clean

$(BIN)/rebuno: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/rebuno

venv: $(BIN)/rebuno

demo: venv
	$(BIN)/rebuno demo

test: venv
	$(BIN)/python -m pytest -q

bench: venv
	$(BIN)/python benchmarks/tool_latency.py

schemas: venv
	$(BIN)/python -m schemas.export

clean:
	rm -rf $(VENV) .pytest_cache
