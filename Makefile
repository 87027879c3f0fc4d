# Two entry points for a fresh machine with only python3 (>= 3.11) and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test unit run clean

$(VENV): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(VENV)

demo: $(VENV)
	$(BIN)/chunkd demo

test: $(VENV)
	$(BIN)/python -m pytest -q tests

unit: $(VENV)
	$(BIN)/python -m pytest -q tests/unit

clean:
	rm -rf $(VENV) .chunkd
