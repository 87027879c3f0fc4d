# Two entry points for a fresh machine with only python3 (>= 3.11) and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test unit run clean promtool chromium faketime bench

$(VENV): requirements.lock requirements-dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(VENV)

demo: $(VENV)
	$(BIN)/chunkd demo

test: $(VENV) promtool chromium faketime
	$(BIN)/python -m pytest -q tests

# Best effort: the metrics test also runs `promtool check metrics` when it is installed
# (Debian package prometheus). Without root or apt the test says it skipped it.
promtool:
	@command -v promtool >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1; } || \
	  echo "promtool not installed: the promtool metrics check will be skipped"

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
	rm -rf $(VENV) .chunkd

# The benchmark against its peers (installs pgqueuer and procrastinate into .venv).
bench: $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check pgqueuer==1.6.0 procrastinate==3.10.0 "psycopg[binary]==3.3.9" uvloop==0.23.0
	$(BIN)/chunkd bench --chunks 100000 --compare
