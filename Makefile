# Two entry points for a fresh machine with only python3 (>= 3.11) and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# checkov lives in a venv of its own (see requirements-lint.lock for why).
LINT_VENV := .venv-lint

.PHONY: demo test unit run clean promtool chromium faketime bench

$(VENV): requirements.lock requirements-dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(VENV)

demo: $(VENV)
	$(BIN)/chunkd demo

# Two pytest processes side by side on the two cores: the chaos tests (several daemons each,
# timed faults) one after another in one, the rest of the suite in the other. Not pytest-xdist's
# --dist loadgroup: with pytest 9 its xdist_group marks are silently ignored (xdist 3.8 sets
# item._nodeid, which pytest 9 no longer reads), so chaos tests ran two at a time and, in CI,
# exhausted Postgres's connections. The chaos summary prints last.
test: $(VENV) $(LINT_VENV) promtool chromium faketime
	@mkdir -p .chunkd; \
	$(BIN)/python -m pytest -q tests/chaos > .chunkd/chaos-tests.log 2>&1 & chaos=$$!; \
	$(BIN)/python -m pytest -q tests --ignore=tests/chaos; rest=$$?; \
	wait $$chaos; chaos_rc=$$?; \
	echo "---- tests/chaos (one at a time, beside the rest) ----"; cat .chunkd/chaos-tests.log; \
	[ $$rest -eq 0 ] && [ $$chaos_rc -eq 0 ]

$(LINT_VENV): requirements-lint.lock
	$(PYTHON) -m venv $(LINT_VENV)
	$(LINT_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-lint.lock
	touch $(LINT_VENV)

# promtool and prometheus (Debian package prometheus): the metrics format check, the alert
# rules and their unit tests, the dashboard's expressions and the real-scrape test. Installed
# when root with apt (a fresh machine may need `apt-get update` first); otherwise those tests
# are skipped outside CI and fail in CI.
promtool:
	@command -v promtool >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1; }; }; } || \
	  echo "promtool not installed: the Prometheus tests will be skipped (outside CI)"

# The dashboard's browser tests drive Debian's Chromium with Playwright (never a downloaded
# browser). Installed when root with apt; otherwise the test says how (CI fails without it).
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; } || \
	  echo "chromium not installed: the dashboard browser test will be skipped (outside CI)"

# A daemon with a skewed host clock (the bulk export's transactionTime test) runs under
# libfaketime (Debian package faketime). Installed when root with apt; the test says how otherwise.
faketime:
	@command -v faketime >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends faketime >/dev/null 2>&1; } || \
	  echo "faketime not installed: the skewed-clock test will be skipped (outside CI)"

unit: $(VENV)
	$(BIN)/python -m pytest -q tests/unit

clean:
	rm -rf $(VENV) $(LINT_VENV) .chunkd

# The benchmark against its peers (installs pgqueuer and procrastinate into .venv).
bench: $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check pgqueuer==1.6.0 procrastinate==3.10.0 "psycopg[binary]==3.3.9" uvloop==0.23.0
	$(BIN)/chunkd bench --chunks 100000 --compare
