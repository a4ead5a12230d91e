# Two commands do all the set-up on a fresh machine:
#   make demo   - create .venv, install twostep, get the data, run the main job
#   make test   - create .venv, install twostep with its dev tools, run the test suite
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.twostep-installed

.PHONY: demo test lint docs data clean-venv

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null || { \
	  echo "twostep needs Python 3.11 (torch 2.14.1 and its exact pins); '$(PYTHON)' is not 3.11: run make PYTHON=python3.11 ..."; exit 1; }
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || { \
	  echo "the venv module of $(PYTHON) is missing: install python3.11-venv (Debian: apt-get install python3-venv)"; exit 1; }
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

docs: $(STAMP)
	$(BIN)/python -m twostep.config_docs

clean-venv:
	rm -rf $(VENV)
