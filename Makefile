# Two commands a user needs: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMPS := $(VENV)/.stamps

.PHONY: demo test lint install bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(STAMPS)/base: pyproject.toml constraints.txt | $(PY)
	$(PIP) install -q -c constraints.txt -e .
	@mkdir -p $(STAMPS) && touch $@

$(STAMPS)/test: pyproject.toml constraints.txt | $(PY)
	$(PIP) install -q -c constraints.txt -e '.[test]'
	$(MAKE) --no-print-directory $(STAMPS)/peers
	@mkdir -p $(STAMPS) && touch $@ $(STAMPS)/base

# nnU-Net's network package, for the benchmark's TotalSegmentator-fast peer. --no-deps: its
# timm -> torchvision chain would replace the CPU torch; PlainConvUNet itself needs only einops.
$(STAMPS)/peers: | $(PY)
	$(PIP) install -q --no-deps "dynamic-network-architectures==0.4.4" "einops>=0.7"
	@mkdir -p $(STAMPS) && touch $@

install: $(STAMPS)/base

demo: $(STAMPS)/base
	$(VENV)/bin/spineseg demo

bench: $(STAMPS)/base $(STAMPS)/peers
	$(VENV)/bin/spineseg benchmark --quick

lint: $(STAMPS)/test
	$(VENV)/bin/ruff check src tests

test: $(STAMPS)/test
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/pytest -q

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
