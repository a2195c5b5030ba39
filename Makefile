# nnzoo: `make demo` and `make test` set everything up on a fresh machine (virtual environment in .venv).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.nnzoo-installed

.PHONY: install demo test test-fast test-gpu lint bench bench-ssl bench-domain-shift clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -c "import torch, torchvision, nnunetv2, nnzoo.pipeline; print('nnzoo installed: torch', torch.__version__)"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/nnzoo demo

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not slow"

test-gpu: $(STAMP)
	$(BIN)/python -m pytest -q -m gpu

bench-ssl: $(STAMP)
	$(BIN)/python benchmarks/low_label.py

bench-domain-shift: $(STAMP)
	$(BIN)/python benchmarks/domain_shift.py --jobs 2

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py --update-readme

clean:
	rm -rf $(VENV) nnzoo_work .pytest_cache .ruff_cache *.egg-info
