# fs_cdr — the two commands of the README are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
# FreeSWITCH's prefix when none is running to ask (/usr: the FHS layout of a packaged FreeSWITCH)
FS_PREFIX ?=

.PHONY: demo test schema check bench install-freeswitch uninstall-freeswitch clean

$(VENV)/.installed-%: pyproject.toml setup.py fs_cdr/_hangup.c
	tools/system-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$*]"
	touch $@

## The main job on the embedded default: recorded FreeSWITCH events -> the real engine -> SQLite.
demo: $(VENV)/.installed-fast
	$(VENV)/bin/fs-cdr -c cdr.json play tests/events/*.jsonl

## The test suite against real MariaDB, PostgreSQL, Redis and SQLite (started here if they are down).
test: $(VENV)/.installed-test
	$(VENV)/bin/ruff check fs_cdr bench tools
	$(VENV)/bin/mypy
	tools/services.sh
	$(PY) -m pytest -q

## CREATE TABLE for the configured table and fields (DBTYPE=mysql|pgsql|sqlite to choose).
schema: $(VENV)/.installed-fast
	$(VENV)/bin/fs-cdr -c cdr.json schema $(if $(DBTYPE),--dbtype $(DBTYPE))

check: $(VENV)/.installed-all
	$(VENV)/bin/fs-cdr -c cdr.json check

## Put fs_cdr where FreeSWITCH's mod_python3 imports it from (asks the running FreeSWITCH where that is).
install-freeswitch:
	$(PYTHON) tools/install_freeswitch.py $(if $(FS_PREFIX),--prefix $(FS_PREFIX)) $(INSTALL_ARGS)

uninstall-freeswitch:
	$(PYTHON) tools/install_freeswitch.py --uninstall $(if $(FS_PREFIX),--prefix $(FS_PREFIX)) $(INSTALL_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache *.egg-info

## The benchmark (not part of the tests): figures as ratios of the raw limits measured in the same run.
bench: $(VENV)/.installed-test
	tools/services.sh
	$(PY) bench/run.py
