# Two commands do everything on a fresh Linux machine with Python >= 3.10:
#   make book   render the book (HTML + PDF) into _book/ with Quarto
#   make test   run the whole test suite (unit, parity, chapters, notebooks, distributed, kernels)
#
# TORCH pins the PyTorch build installed first. The default is the CPU reference build the book is
# tested with; on a GPU machine use e.g. `make test TORCH=torch` (any torch >= 2.4 works; quote
# specifiers that contain '>' or '<': TORCH="'torch>=2.6'").

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# Local copy of the shared data sets, if present beside the repository (CI has one); see README.
LLMBOOK_DATA ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),)
export LLMBOOK_DATA
export PYTHONHASHSEED := 0
export LLMBOOK_QUIET := 1

.PHONY: book test venv notebooks check clean

$(PY):
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python >= 3.10 is required, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-%: pyproject.toml | $(PY)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[$*]"
	touch $@

venv: $(VENV)/.installed-test

# The unit, parity and chapter tests, then the notebooks (nbval) in a new venv with only the README's install
# and no LLMBOOK_DATA: their data comes through the registry's downloads from the data folder served on
# 127.0.0.1 (tests/test_fresh_runtime.py).
test: export OMP_NUM_THREADS = 1
test: $(VENV)/.installed-test
	$(PY) -m pytest -n 2 --dist loadgroup -q -m "not fresh_runtime" tests
	LLMBOOK_TORCH="$(TORCH)" $(PY) -m pytest -q -m fresh_runtime tests/test_fresh_runtime.py

book: $(VENV)/.installed-book
	@command -v quarto >/dev/null 2>&1 || [ -x $(VENV)/bin/quarto ] || \
	  $(PIP) install -q "quarto-cli>=1.9" >/dev/null 2>&1 || true
	@QUARTO=$$(command -v quarto || ls $(VENV)/bin/quarto 2>/dev/null); \
	if [ -z "$$QUARTO" ] || ! "$$QUARTO" --version >/dev/null 2>&1; then \
	  echo "make book: the Quarto CLI (>= 1.9) is not installed, and installing it with pip (quarto-cli) failed."; \
	  echo "Install Quarto from https://quarto.org/docs/get-started/ (or your package manager), then run 'make book' again."; \
	  exit 1; \
	fi; \
	VERSION=$$("$$QUARTO" --version); \
	if ! $(PY) -c "import sys; sys.exit(tuple(map(int, '$$VERSION'.split('.')[:2])) < (1, 9))"; then \
	  echo "make book: Quarto $$VERSION is too old; the book needs Quarto >= 1.9 (Typst books). Upgrade from https://quarto.org/docs/get-started/"; \
	  exit 1; \
	fi; \
	PATH="$(abspath $(VENV))/bin:$$PATH" QUARTO_PYTHON="$(abspath $(PY))" "$$QUARTO" render

notebooks: $(VENV)/.installed-test
	$(PY) scripts/booktools.py notebooks

check: $(VENV)/.installed-test
	$(PY) scripts/booktools.py check

clean:
	rm -rf _book .quarto chapters/*.quarto_ipynb .pytest_cache
