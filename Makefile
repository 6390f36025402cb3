# Two entry points, each creating (or reusing) the virtual environment it needs:
#   make demo   trains EBGAN-PT (Fig. 4c) on the embedded MNIST digits, offline, in minutes.
#   make test   runs the test suite (what CI runs through .ci/run).
PYTHON ?= python3
VENV   ?= .venv
WORKDIR ?= workdirs/demo
STAMP  := $(VENV)/.installed
# Test processes (pytest-xdist). Most tests are tiny configs whose time is tracing and
# compiling, largely one thread each: on 2 cores, 2 workers ran the suite in 10 min against
# 15.5 min for one process, back to back.
TEST_WORKERS ?= 2

.PHONY: demo test env
env: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/python -m ebgan_jax.main --config=configs/mnist_fc.py:ebgan_pt --workdir=$(WORKDIR)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) tests
