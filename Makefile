# The two commands of the README: `make run` and `make test`. Each sets up what is missing.
# Tools run as `.venv/bin/python -m ...`, so no script's `#!` line decides which venv runs.

ifndef PYTHON
PYTHON := $(shell for p in python3.13 python3.12 python3.11 python3; do $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && { echo $$p; break; }; done)
endif
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --quiet --quiet --disable-pip-version-check  # errors only
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test
CHROMIUM := /usr/bin/chromium

# A venv is kept only if it was made here and still works: its python runs and its pip's
# `#!` line names this folder's venv. One copied or cloned from another folder, or left
# by a Python that is gone, is made anew (its scripts and editable install point elsewhere).
VENV_OK := $(shell $(PY) -c 'import sys' >/dev/null 2>&1 && head -1 $(VENV)/bin/pip 2>/dev/null | grep -qF '#!$(CURDIR)/$(VENV)/bin/' && echo yes)
ifneq ($(VENV_OK),yes)
$(shell rm -rf $(VENV))
endif

.PHONY: run test lint container-tools bench bench-quick clean

$(RUN_STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Kibitz needs Python 3.11 or newer (python3.11, python3.12 ...)"; exit 1; }
	@echo "Setting up $(VENV) with Kibitz and its dependencies (only when missing or changed)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PIP) install --upgrade pip
	@$(PIP) install -e .
	@touch $@

$(TEST_STAMP): $(RUN_STAMP) examples/kibitz-example/pyproject.toml examples/template/pyproject.toml
	@echo "Setting up the test tools and the example plugins in $(VENV)"
	@$(PIP) install -e '.[test]' -e examples/kibitz-example -e examples/template
	@touch $@

run: $(RUN_STAMP)
	@$(PY) -m kibitz serve

# mypy reads the packages from build/mypy, links laid out anew from pyproject.toml's
# package-dir (the editable install's import hook is invisible to it): see tools/mypy_tree.py.
lint: $(TEST_STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) tools/mypy_tree.py
	$(PY) -m mypy

# The browser tests drive Debian's Chromium, never a downloaded one: installed here where
# it is missing and apt-get may run; where it cannot be, those tests skip and say why.
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "Installing Debian's chromium for the browser tests"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
	    || echo "chromium could not be installed: the browser tests will skip"; \
	else echo "chromium is missing and cannot be installed here: the browser tests will skip"; fi

# The container test builds the Dockerfile with Debian's podman and runc, on a Debian base
# made here by debootstrap: public image registries may be out of reach, Debian's mirror
# and PyPI are not. Installed where one is missing and apt-get may run; where they cannot
# be, tests/test_container.py skips and says why. Three tools, no one file to stand for
# them all: this looks each time, which costs nothing once they are there.
container-tools:
	@missing=$$(for tool in podman runc debootstrap; do command -v $$tool >/dev/null || [ -x /usr/sbin/$$tool ] || echo $$tool; done); \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "Installing Debian's podman, runc and debootstrap for the container test"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq podman runc debootstrap >/dev/null 2>&1 \
	    || { apt-get update -qq && apt-get install -y -qq podman runc debootstrap >/dev/null; } \
	    || echo "podman, runc or debootstrap could not be installed: the container test will skip"; \
	else echo "missing and cannot be installed here:" $$missing"; the container test will skip"; fi

test: lint $(CHROMIUM) container-tools
	$(PY) -m pytest

bench: $(TEST_STAMP)
	@$(PIP) install -e '.[bench]'
	$(PY) -m bench

bench-quick: $(TEST_STAMP)
	@$(PIP) install -e '.[bench]'
	$(PY) -m bench --quick

clean:
	rm -rf $(VENV) build *.egg-info
