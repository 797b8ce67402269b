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

# System packages the tests use (Debian/Ubuntu names): bubblewrap sandboxes model-written code (@sec-evaluation-code);
# chromium runs the model explorer page in a real browser (@sec-architecture-explorer).
SYSTEM_PACKAGES := bubblewrap libseccomp2 chromium

# llama.cpp for the GGUF parity tests, compiled by pip for any x86-64 with AVX2 (a build for this machine's newest
# instructions, such as AMX, crashes where the kernel does not enable them, e.g. in virtual machines).
# LLAVA_BUILD=OFF skips the multimodal library, which the tests do not use (a shorter build).
LLAMA_CPP_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAVA_BUILD=OFF

.PHONY: book book-latex test test-gguf venv notebooks freeze check clean sysdeps

$(PY):
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python >= 3.10 is required, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-%: pyproject.toml | $(PY)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[$*]"
	touch $@

venv: $(VENV)/.installed-test

# Installs the missing SYSTEM_PACKAGES with apt-get as root or with passwordless sudo; otherwise says what to install
# (the tests that need them then skip, saying why). Systems without dpkg install them with their own package manager.
sysdeps:
	@command -v dpkg-query >/dev/null 2>&1 || exit 0; \
	missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; missing=$$(echo $$missing); \
	if ! command -v apt-get >/dev/null 2>&1; then SUDO=none; \
	elif [ "$$(id -u)" = 0 ]; then SUDO=; \
	elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	else SUDO=none; fi; \
	if [ "$$SUDO" = none ]; then \
	  echo "make sysdeps: cannot install system packages here; install $$missing with your package manager (tests that need them are skipped)"; \
	  exit 0; \
	fi; \
	echo "make sysdeps: installing $$missing"; \
	$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null 2>&1 || \
	{ $$SUDO apt-get update -qq >/dev/null 2>&1 && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; } || \
	echo "make sysdeps: apt-get could not install $$missing (tests that need them are skipped)"

# GGUF parity with llama.cpp: llama-cpp-python compiles from source (about 10 minutes on 2 cores, once; pip keeps
# the wheel), so it has its own extra and its own step.
$(VENV)/.installed-gguf-parity: pyproject.toml $(VENV)/.installed-test
	CMAKE_ARGS="$(LLAMA_CPP_CMAKE_ARGS)" $(PIP) install -q -e ".[gguf-parity]"
	touch $@

test-gguf: export OMP_NUM_THREADS = 1
test-gguf: export HF_HUB_OFFLINE = 1
test-gguf: $(VENV)/.installed-gguf-parity
	$(PY) -m pytest -q tests/test_serve_gguf.py


# The unit, parity and chapter tests, then the notebooks (nbval) in a new venv with only the README's install
# and no LLMBOOK_DATA: their data comes through the registry's downloads from the data folder served on
# 127.0.0.1 (tests/test_fresh_runtime.py).
test: export OMP_NUM_THREADS = 1
# Tests never reach the Hugging Face hub (bitsandbytes may look there for optional kernels at import).
test: export HF_HUB_OFFLINE = 1
test: sysdeps $(VENV)/.installed-test
	$(PY) -m pytest -n 2 --dist loadgroup -q -m "not fresh_runtime" tests --deselect tests/test_serve_gguf.py
	$(MAKE) test-gguf
	LLMBOOK_TORCH="$(TORCH)" $(PY) -m pytest -q -m fresh_runtime tests/test_fresh_runtime.py

# Quarto: the `quarto` on PATH (>= 1.9), else the quarto-cli package from PyPI in .venv (it downloads
# Quarto when installed); otherwise stop and say how to install it. Chapters are not executed when
# _freeze/ is in sync with them (execute: freeze: auto); `make freeze` refreshes it.
QUARTO_FIND = command -v quarto >/dev/null 2>&1 || [ -x $(VENV)/bin/quarto ] || \
	  $(PIP) install -q "quarto-cli>=1.9" >/dev/null 2>&1 || true; \
	QUARTO=$$(command -v quarto || ls $(VENV)/bin/quarto 2>/dev/null); \
	if [ -z "$$QUARTO" ] || ! "$$QUARTO" --version >/dev/null 2>&1; then \
	  echo "make book: the Quarto CLI (>= 1.9) is not installed, and installing it with pip (quarto-cli) failed."; \
	  echo "Install Quarto from https://quarto.org/docs/get-started/ (or your package manager), then run 'make book' again."; \
	  exit 1; \
	fi; \
	VERSION=$$("$$QUARTO" --version); \
	if ! $(PY) -c "import sys; sys.exit(tuple(map(int, '$$VERSION'.split('.')[:2])) < (1, 9))"; then \
	  echo "make book: Quarto $$VERSION is too old; the book needs Quarto >= 1.9 (Typst books). Upgrade from https://quarto.org/docs/get-started/"; \
	  exit 1; \
	fi

book: $(VENV)/.installed-book
	@$(QUARTO_FIND); \
	PATH="$(abspath $(VENV))/bin:$$PATH" QUARTO_PYTHON="$(abspath $(PY))" "$$QUARTO" render

# The PDF through LaTeX (LuaLaTeX; see _quarto-latex.yml for the TeX Live packages it needs).
book-latex: $(VENV)/.installed-book
	@$(QUARTO_FIND); \
	PATH="$(abspath $(VENV))/bin:$$PATH" QUARTO_PYTHON="$(abspath $(PY))" "$$QUARTO" render --profile latex --to pdf

notebooks: $(VENV)/.installed-test
	$(PY) scripts/booktools.py notebooks

freeze: $(VENV)/.installed-test
	$(PY) scripts/booktools.py freeze

check: $(VENV)/.installed-test
	$(PY) scripts/booktools.py check

clean:
	rm -rf _book .quarto chapters/*.quarto_ipynb .pytest_cache
