# Two commands a user needs: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMPS := $(VENV)/.stamps

.PHONY: demo test lint install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(STAMPS)/base: pyproject.toml constraints.txt | $(PY)
	$(PIP) install -q -c constraints.txt -e .
	@mkdir -p $(STAMPS) && touch $@

$(STAMPS)/test: pyproject.toml constraints.txt | $(PY)
	$(PIP) install -q -c constraints.txt -e '.[test]'
	@mkdir -p $(STAMPS) && touch $@ $(STAMPS)/base

install: $(STAMPS)/base

demo: $(STAMPS)/base
	$(VENV)/bin/spineseg demo

lint: $(STAMPS)/test
	$(VENV)/bin/ruff check src tests

test: $(STAMPS)/test
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/pytest -q

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
