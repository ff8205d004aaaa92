# Peak-Trade backup & recovery. Every target bootstraps .venv (pinned deps) on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CLI    := $(PY) src/infra/backup/__main__.py

.PHONY: help backup backup-list restore restore-backup test test-fast lint typecheck bench bench-restore soak venv clean

help:
	@echo "make backup | backup-list | restore | restore-backup BACKUP_ID=... | test | test-fast | lint | bench | soak MINUTES=N"

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
		{ echo "Python >= 3.10 is required (set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

backup: $(STAMP)  ## Back up the configured sources into the repository (./backups by default)
	$(CLI) create

backup-list: $(STAMP)
	$(CLI) list

restore: $(STAMP)  ## Restore the newest good backup into ./restore/<id>/
	$(CLI) restore

restore-backup: $(STAMP)
	@test -n "$(BACKUP_ID)" || { echo "usage: make restore-backup BACKUP_ID=<id>"; exit 2; }
	$(CLI) restore $(BACKUP_ID)

# The whole suite (CI runs exactly this), on TEST_WORKERS processes (pytest-xdist); the 15
# slowest tests are listed at the end. test-fast leaves out the tests marked slow (crash loops,
# the soak, concurrent processes, S3 clusters): for a quick local run, not instead of `test`.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --durations=15

test-fast: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not slow"

lint: $(STAMP)  ## ruff (lint + format check), the import layers (import-linter), mypy
	$(PY) -m ruff check src tests bench tools
	$(PY) -m ruff format --check src tests bench tools
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m mypy

typecheck: $(STAMP)
	$(PY) -m mypy

SIZE_MB ?= 1024
DB_SIZE_MB ?= 200
bench: $(STAMP)
	$(PY) -m bench.startup
	$(PY) -m bench.run
	$(PY) -m bench.background
	$(PY) -m bench.restore_tree --size-mb $(SIZE_MB)
	$(PY) -m bench.many_backups --count 100000
	$(PY) -m bench.s3
	$(PY) -m bench.s3_listing
	$(PY) -m bench.s3_transfer --size $(SIZE_MB)
	$(PY) -m bench.s3_verify --size 256
	$(PY) -m bench.sqlite_live --size-mb $(DB_SIZE_MB)
	$(PY) -m bench.sqlite_backup --size-mb $(DB_SIZE_MB)

bench-restore: $(STAMP)  ## Back up and restore a mixed tree of SIZE_MB, against cp -a
	$(PY) -m bench.restore_tree --size-mb $(SIZE_MB)

MINUTES ?= 1
soak: $(STAMP)  ## Concurrent create/restore/delete/prune with SIGKILLs for MINUTES, then check
	$(PY) -m tools.soak --minutes $(MINUTES)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
