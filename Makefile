# Two commands work on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test bench typegate clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $@

demo: $(VENV)/.installed
	$(PY) examples/counter.py
	$(PY) examples/ping_pong.py

test: $(VENV)/.installed
	scripts/ensure-postgres
	$(PY) -m pytest
	$(PY) -m pachyderm_typed.typegate typecheck

typegate: $(VENV)/.installed
	$(PY) -m pachyderm_typed.typegate typecheck

bench: $(VENV)/.installed
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .hypothesis *.egg-info
