# Two entry points: `make study` and `make test`. Both create .venv if it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HASH := $(shell cat pyproject.toml | cksum | cut -d' ' -f1)
STAMP := $(VENV)/.installed-$(HASH)
TEST_STAMP := $(VENV)/.installed-test-$(HASH)

.PHONY: study test lint install bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when pyproject.toml changes; the project itself is installed editable.
# `make study` needs the project; `make test` also its test extras (S3 server, MLflow).
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@ $(STAMP)

install: $(STAMP)

# The default study on the embedded dataset; a finished one is only re-exported.
study: $(STAMP)
	@if [ -f studies/default/manifest.json ]; then \
		$(PY) tune_search.py resume default --storage studies; \
	else \
		$(PY) tune_search.py run search_spaces/default.yaml --storage studies; \
	fi
	$(PY) tune_search.py export default --storage studies --out results/default

# Formatting, lint and types (mypy's settings are in pyproject.toml); any finding fails the target.
lint: $(TEST_STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# Lint first (seconds), then the suite. Two workers: most of the suite waits on subprocesses
# and Ray start-up, so it overlaps well.
test: lint
	$(PY) -m pytest -q -n 2 --dist loadgroup

bench: $(TEST_STAMP)
	$(PY) benchmarks/core_bench.py
	$(PY) benchmarks/study_bench.py

clean:
	rm -rf $(VENV) .pytest_cache
