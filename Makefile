# Meterops: `make run` starts everything with demo data; `make test` runs the whole suite.
SHELL := /bin/bash
UV ?= $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
export UV

.PHONY: run test lint format install bench-ingest bench-rollup bench-usage bench-faults

.tools/bin/uv:
	python3 -m venv .tools
	.tools/bin/pip install --quiet uv

install: $(if $(filter .tools/bin/uv,$(UV)),.tools/bin/uv)
	$(UV) sync --frozen

run: install
	./scripts/run.sh

lint: install
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .

format: install
	$(UV) run --frozen ruff format .
	$(UV) run --frozen ruff check --fix .

test: lint
	./scripts/ensure_chromium.sh
	DEBUG=$${DEBUG:-true} DATABASE_URL="$$($(UV) run --frozen python scripts/ensure_db.py)" \
	  $(UV) run --frozen pytest $(PYTEST_ARGS)

bench-ingest: install
	DATABASE_URL="$$($(UV) run --frozen python scripts/ensure_db.py)" $(UV) run --frozen python bench/ingest.py

bench-rollup: install
	DATABASE_URL="$$($(UV) run --frozen python scripts/ensure_db.py)" $(UV) run --frozen python bench/rollup.py

bench-usage: install
	DATABASE_URL="$$($(UV) run --frozen python scripts/ensure_db.py)" $(UV) run --frozen python bench/usage.py

# Its own private PostgreSQL cluster (it restarts it), so no DATABASE_URL.
bench-faults: install
	$(UV) run --frozen python bench/faults.py
