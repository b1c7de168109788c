# Thin targets: CI and the README call these, nothing else.
#
# Installs take the locks as they are (`--no-deps --require-hashes`): each lock is a complete
# closure, so pip resolves nothing and a new release on the index can neither break nor change
# an install. `make run` installs the runtime lock; `make test` and `make bench` the dev lock,
# which holds the runtime one at the same versions.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_LOCK := requirements/run.lock
DEV_LOCK := requirements/dev.lock
INSTALL_LOCK := $(BIN)/pip install --quiet --disable-pip-version-check --no-deps --require-hashes -r
LOCK_OPTIONS := --python-version 3.11 --universal --generate-hashes --custom-compile-command "make lock" --quiet
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install install-dev run test check-locks lint typecheck pytest bench screenshot lock clean

install: $(VENV)/.run-installed

install-dev: $(VENV)/.dev-installed

$(VENV)/.run-installed: pyproject.toml $(RUN_LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(INSTALL_LOCK) $(RUN_LOCK)
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.run-installed $(DEV_LOCK)
	$(INSTALL_LOCK) $(DEV_LOCK)
	touch $@

run: install
	$(BIN)/chatkeep serve --host $(HOST) --port $(PORT)

test: check-locks lint typecheck pytest

check-locks:
	PYTHON=$(PYTHON) sh scripts/check-locks $(RUN_LOCK) $(DEV_LOCK)

lint: install-dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: install-dev
	$(BIN)/mypy

# Two workers: most tests wait on sockets, servers and timers rather than on a core, so two
# halve the suite's time on a machine of two cores (each test keeps its own servers and schema).
pytest: install-dev
	$(BIN)/pytest --numprocesses 2 --cov --cov-report=term:skip-covered

bench: install-dev
	$(BIN)/python -m bench

# The README's picture of the chat page, taken from a real browser session (Debian's chromium).
screenshot: install-dev
	$(BIN)/python -m scripts.screenshot docs/chat-page.png

# Re-pin both locks after editing pyproject.toml or requirements/build.in: the dev lock first,
# then the runtime lock constrained to it, so the two agree on every version they share.
# Pins already in a lock are kept where they still fit; `make lock LOCK_OPTIONS+=--upgrade`
# moves everything to the newest releases.
lock: install-dev
	$(BIN)/uv pip compile pyproject.toml requirements/build.in --extra dev $(LOCK_OPTIONS) -o $(DEV_LOCK)
	$(BIN)/uv pip compile pyproject.toml requirements/build.in --constraint $(DEV_LOCK) $(LOCK_OPTIONS) -o $(RUN_LOCK)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .coverage
