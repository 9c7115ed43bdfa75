# The README's two commands:
#   make demo   installs into .venv (if needed) and runs the main job on the procedural mini dataset
#   make test   installs into .venv (if needed) and runs the fast test suite (what CI runs)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
MINI   := data/mini

.PHONY: demo test test-slow install clean-runs device-kit

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

# Wheels of the packages the lent GPU machine's image lacks (Python 3.12 there), for
# `python -m utils.benchmarks.device_check` (its docstring gives the device command; carry .whl)
device-kit: $(STAMP)
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux2014_x86_64 -d .whl omegaconf==2.4.0 clip-anytorch==2.6.0 ftfy==6.3.1 wcwidth==0.9.4 \
	  smplx==0.1.28 'setuptools<82'
	ls .whl
