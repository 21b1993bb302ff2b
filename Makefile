# Developer and CI entry points. Everything runs from .venv, which `make install` builds.
#
#   make install      editable install with every extra; builds the C kernel in place
#   make test         whole suite on the C kernel, then again on the pure-Python kernel
#   make demo         the demo site (fastsess demo)
#   make lint         ruff, and the workflow files against GitHub's schema
#   make bench        per-request benchmarks against Beaker, Flask and Django
#   make bench-http   requests/s under gunicorn: no sessions, fastsess lmdb, Beaker file (wrk if installed)
#   make clean        build products and caches; `make distclean` also removes .venv
#
# Variables: PYTHON (interpreter for the venv), VENV, PYTEST_ARGS (e.g. "-x -k lmdb"),
# BENCH_ARGS (e.g. "--quick"), BENCH_HTTP_ARGS (e.g. "--quick" or "--client python").
# FASTSESS_NO_EXTENSIONS=1 builds and tests the pure-Python kernel only.

PYTHON ?= python3
VENV ?= .venv
PYTEST_ARGS ?=
BENCH_ARGS ?=
BENCH_HTTP_ARGS ?=

BIN := $(VENV)/bin
PY := $(BIN)/python
PYTEST := $(PY) -m pytest --timeout=300 $(PYTEST_ARGS)

# The stamps name what they were made with, so that changing PYTHON or switching
# FASTSESS_NO_EXTENSIONS makes them stale.
KERNEL := $(if $(filter-out 0,$(FASTSESS_NO_EXTENSIONS)),python,c)
VENV_STAMP := $(VENV)/.made-with-$(subst /,_,$(PYTHON))
INSTALL_STAMP := $(VENV)/.installed-$(KERNEL)-kernel

.DEFAULT_GOAL := help
.PHONY: help venv install test demo lint bench bench-http clean distclean

help:
	@sed -n '/^$$/q; s/^# \{0,1\}//p' $(firstword $(MAKEFILE_LIST))

venv: $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml setup.py
	@want=$$($(PYTHON) -c 'import sys; print(sys.version)') || exit 1; \
	have=$$($(PY) -c 'import sys; print(sys.version)' 2>/dev/null) || true; \
	if [ -n "$$have" ] && [ "$$have" != "$$want" ]; then \
		echo "$(VENV) was made with another Python; recreating it"; rm -rf $(VENV); \
	fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	rm -f $(VENV)/.made-with-*
	touch $@

install: $(INSTALL_STAMP)

# Editable: Python files are used from src/, and the compiled modules are built
# into src/fastsess/. A change to their sources needs a new install, hence the
# dependency: _request_py.py, _session_py.py, stores/_memory_py.py and
# stores/_lmdb_fast_py.py run compiled (fastsess._request, fastsess._session,
# fastsess.stores._memory, fastsess.stores._lmdb_fast) with the C kernel.
$(INSTALL_STAMP): $(VENV_STAMP) pyproject.toml setup.py \
		$(wildcard src/fastsess/_core.pyx src/fastsess/_request_py.py src/fastsess/_request.pxd \
			src/fastsess/_session_py.py src/fastsess/_session.pxd \
			src/fastsess/stores/_memory_py.py src/fastsess/stores/_memory.pxd \
			src/fastsess/stores/_lmdb_fast_py.py src/fastsess/stores/_lmdb_fast.pxd \
			src/fastsess/stores/_record.pxd)
	rm -f $(VENV)/.installed-*
	$(PY) -m pip install -e '.[test,all]'
	@if [ "$(KERNEL)" = python ]; then \
		echo "fastsess: C kernel skipped (FASTSESS_NO_EXTENSIONS=1)"; \
	elif $(PY) -c 'import fastsess._core, fastsess._request, fastsess._session' 2>/dev/null; then \
		echo "fastsess: C kernel built"; \
	else \
		echo "WARNING: fastsess: the C kernel did not build; only the pure-Python kernel is there"; \
		echo "         (run '$(PY) -m pip install -v -e .' to see why)"; \
	fi
	touch $@

# The C pass requires the compiled kernel, so a failed build cannot pass as the fallback.
test: install
ifneq ($(KERNEL),python)
	@echo "=== test suite: C kernel ==="
	FASTSESS_REQUIRE_EXTENSIONS=1 $(PYTEST)
endif
	@echo "=== test suite: pure-Python kernel ==="
	FASTSESS_NO_EXTENSIONS=1 $(PYTEST)

demo: install
	$(BIN)/fastsess demo

lint: install
	$(BIN)/ruff check $(wildcard src tests bench)
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml

bench: install
	$(BIN)/fastsess bench $(BENCH_ARGS)

# Exits 1 when the gate fails (lmdb below 90% of the requests/s without sessions).
bench-http: install
	$(PY) bench/http_load.py $(BENCH_HTTP_ARGS)

clean:
	rm -rf build dist src/*.egg-info .pytest_cache .ruff_cache .hypothesis .benchmarks
	rm -f src/fastsess/_core.c src/fastsess/*.html src/fastsess/_core*.so src/fastsess/_core*.pyd
	rm -f $(VENV)/.installed-*
	find src tests $(wildcard bench) -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
