# Two commands do all the set-up on a fresh machine:
#   make demo   - create .venv, install twostep, get the data, run the main job
#   make test   - create .venv, install twostep with its dev tools, run the test suite
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.twostep-installed

.PHONY: demo test lint data clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

data:
	scripts/ensure-data.sh

demo: $(STAMP) data
	$(BIN)/twostep demo

test: $(STAMP)
	-scripts/ensure-data.sh
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

clean-venv:
	rm -rf $(VENV)
