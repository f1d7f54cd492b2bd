# Two entry points: `make study` and `make test`. Both create .venv if it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: study test install bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when pyproject.toml changes; the project itself is installed editable.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(STAMP)

study: $(STAMP)
	$(PY) tune_search.py train --epochs 4 --density 0.05 --out runs/make-study-$$(date +%Y%m%d-%H%M%S)

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/core_bench.py

clean:
	rm -rf $(VENV) .pytest_cache
