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
	rm -rf .demo && mkdir .demo
	$(PY) examples/counter_disk.py .demo/pachyderm.db
	$(PY) examples/counter_disk.py .demo/pachyderm.db
	$(PY) examples/counter.py
	$(PY) examples/ping_pong.py
	$(PY) examples/bank_transfer.py .demo/bank.db
	$(PY) examples/janken.py
	$(PY) -m pachyderm_typed inspect .demo/pachyderm.db

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
