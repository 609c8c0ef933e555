# Two commands on a fresh machine:
#   make serve   create .venv, install, serve the bundled default model on http://127.0.0.1:8000/v1
#   make test    install the dev extras and run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: serve test bench test-reference default-model clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(VENV)/.installed $@

serve: $(VENV)/.installed
	$(BIN)/kimi-k25 serve $(ARGS)

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest $(ARGS)

# Benchmark kimi-k25 against transformers on the bench model; writes docs/benchmarks.md.
$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[dev,bench]'
	touch $(VENV)/.installed $(VENV)/.installed-dev $@

bench: $(VENV)/.installed-bench
	$(BIN)/python bench/run_bench.py $(ARGS)

# Optional: compare media preprocessing with transformers' processors, which need torchvision.
# torchvision does not import beside the CPU torch wheel, so this uses its own environment.
REF_VENV := .venv-ref
$(REF_VENV)/.installed:
	$(PYTHON) -m venv $(REF_VENV)
	$(REF_VENV)/bin/python -m pip install torch==2.14.1 torchvision==0.29.1 transformers==5.25.0 pillow av numpy \
		pytest safetensors jinja2 tiktoken matplotlib scikit-image
	touch $@

test-reference: $(REF_VENV)/.installed
	$(REF_VENV)/bin/python -m pytest tests/test_media_reference.py

# Rebuild kimi_k25/default_model from scripts/build_default_model.py (the result is committed).
default-model: $(VENV)/.installed
	$(BIN)/python scripts/build_default_model.py

clean:
	rm -rf $(VENV) $(REF_VENV) .pytest_cache *.egg-info
