# The README's two commands:
#   make demo   installs into .venv (if needed) and runs the main job on the procedural mini dataset
#   make test   installs into .venv (if needed) and runs the fast test suite (what CI runs)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
MINI   := data/mini

.PHONY: demo test test-slow install clean-runs

install: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip -q
	$(PY) -m pip install -q -r requirements.txt
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

$(MINI)/train.txt: | $(STAMP)
	$(PY) -m datasets.mini --out $(MINI) --workers 2

demo: $(STAMP) $(MINI)/train.txt
	$(PY) -m utils.demo --data $(MINI)

clean-runs:
	rm -rf runs/demo
