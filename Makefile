# keyflow — one command surface. `make run` and `make test` do all their own set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test test-fast lint format services clean bench bench-trends bench-ingest bench-scale

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install keyflow with its dev tools

run: $(STAMP) ## the main job on embedded defaults: no servers, no AWS account
	$(BIN)/keyflow demo

test: $(STAMP) services ## the test suite (PostgreSQL, MariaDB and RabbitMQ on 127.0.0.1, started when down)
	$(BIN)/python -m pytest

test-fast: $(STAMP) ## the tests that need no service (config, transforms, architecture), in seconds
	$(BIN)/python -m pytest -m "not services"

lint: $(STAMP) ## ruff (check + format) and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP) ## ETL benchmark: the raw COPY limit, keyflow and the usual pandas script (see BENCHMARKS.md)
	$(BIN)/python bench/etl_bench.py $(BENCH_ARGS)

bench-scale: $(STAMP) ## Fan-out: 1,000 and 10,000 small keys in one run, and a 365-day backfill (see BENCHMARKS.md)
	$(BIN)/python bench/scale_bench.py $(BENCH_ARGS)

bench-trends: $(STAMP) ## Trend scoring: events per minute over 10 M generated events, beside a pandas baseline
	$(BIN)/python bench/trends_bench.py $(BENCH_ARGS)

bench-ingest: $(STAMP) services ## Event ingestion: RabbitMQ into DynamoDB + S3 (moto), beside a BatchWriteItem loop
	$(BIN)/python bench/ingest_bench.py $(BENCH_ARGS)

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

services: ## start the local services the tests use, when they are down
	bash .ci/services.sh

clean:
	rm -rf $(VENV) .keyflow .pytest_cache .mypy_cache .ruff_cache
