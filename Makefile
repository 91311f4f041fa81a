# langdock-budget — developer entry points. Every target creates the venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test coverage lint bench docs screenshots install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)  ## run the daemon against the bundled Langdock simulator (Ctrl-C to stop)
	$(BIN)/langdock-budget --log-format console demo

# One pytest-xdist worker per core and two more (the end-to-end tests wait on the processes
# they start: a lease to run out, the next poll, a browser; on 2 cores 5 workers were slower
# than 4, 3 and 4 alike within this VM's noise: `bench/suite.py`, docs/PERFORMANCE.md), a test
# file at a time (a module's servers start once), the files of tests marked `long` first
# (tests/conftest.py). Temporary files are kept in memory where /dev/shm has room (a test's
# SQLite store syncs to disk as it opens and closes), and Python keeps its bytecode cache even
# where the environment turns it off: every worker and every daemon a test starts would compile
# the sources again. `make test` and `make coverage` run the same suite this way; only
# `coverage` measures, and only `test` loads the property tests' quick profile (a quarter of
# each property's examples, tests/properties.py): CI runs both, so every change meets the
# full counts too.
TEST_WORKERS ?= $(shell $(PYTHON) -c 'import os; print(len(os.sched_getaffinity(0)) + 2)' \
  2>/dev/null || echo auto)
TEST_TMPDIR ?= $(shell df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 && $$4 > 1048576 {print "/dev/shm"}')
PYTEST := PYTHONDONTWRITEBYTECODE= $(if $(TEST_TMPDIR),TMPDIR=$(TEST_TMPDIR)) \
  $(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# Branch coverage of daemon/ with a floor, raised as it grows (the daemon's own process in the
# end-to-end tests is not measured; the same code is, by the in-process tests). Tracing every
# line costs the suite a third to a half more CPU, so it is a target of its own, which CI runs
# after `make test` (.ci/run). The coverage data of a run stays in .venv under its own name
# (pytest-cov combines every .coverage.* beside its data file: runs side by side in one
# checkout would take each other's).
COVERAGE := --cov=daemon --cov-branch --cov-report=term:skip-covered --cov-fail-under=90

test: $(STAMP)  ## the whole test suite, in parallel (property tests: a quarter of their examples)
	$(PYTEST) --hypothesis-profile=quick

coverage: $(STAMP)  ## the whole test suite with branch coverage of daemon/ and its floor
	COVERAGE_FILE=$(VENV)/.coverage.$$$$ $(PYTEST) $(COVERAGE); \
	  status=$$?; rm -f $(VENV)/.coverage.$$$$; exit $$status

lint: $(STAMP)  ## ruff + mypy --strict on daemon/ and bench/
	$(BIN)/ruff check daemon tests bench
	$(BIN)/ruff format --check daemon tests bench
	$(BIN)/mypy daemon bench
	$(BIN)/hadolint Dockerfile
	@if command -v systemd-analyze >/dev/null; then \
	  sed "s#/opt/langdock-budget/venv/bin/langdock-budget#$(CURDIR)/$(BIN)/langdock-budget#" \
	    systemd/langdock-budget.service > $(VENV)/langdock-budget.service && \
	  systemd-analyze verify $(VENV)/langdock-budget.service && echo "systemd unit: verified"; \
	else echo "systemd-analyze not installed: unit not verified"; fi

docs: $(STAMP)  ## regenerate docs/CONFIG.md, docs/CLI.md and docs/METRICS.md from the code
	$(BIN)/python -m daemon.config_reference docs/CONFIG.md
	$(BIN)/python -m daemon.cli.reference docs/CLI.md
	$(BIN)/python -m daemon.metrics_reference docs/METRICS.md

screenshots: $(STAMP)  ## docs/screenshots/ from `make demo` (needs Debian's chromium + chromium-driver)
	$(BIN)/python -m tests.web.screenshots

bench: $(STAMP)  ## benchmarks; numbers go into docs/PERFORMANCE.md
	$(BIN)/python bench/run.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/steady.py
	$(BIN)/python bench/steady.py --keys 10000 --polls 8 --runs 3 --modes kept
	$(BIN)/python bench/steady.py --modes kept,postgresql
	$(BIN)/python bench/idle.py
	$(BIN)/python bench/import_bench.py
	$(BIN)/python bench/firstrun.py
	$(BIN)/python bench/suite.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
