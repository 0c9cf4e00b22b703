# convlens: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
RUN := $(UV) run --frozen
ARGS ?=
HOST ?= 127.0.0.1
PORT ?= 3000
UI_PORT ?= 5000
MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db

.PHONY: help install train ui test lint format clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install: ## install uv if missing, then the locked dependencies (uv sync --frozen)
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --frozen

train: install ## train, log to MLflow, register; overrides via ARGS="optimizer.lr=1e-3 ..."
	$(RUN) python -m pipelines.train $(ARGS)

ui: install ## MLflow UI on the local store at http://127.0.0.1:5000
	$(RUN) mlflow ui --backend-store-uri "$(MLFLOW_TRACKING_URI)" --host 127.0.0.1 --port $(UI_PORT)

test: install ## run the test suite (needs CONVLENS_DATA_DIR pointing at the MNIST folder)
	$(RUN) pytest

lint: install ## ruff check and format check
	$(RUN) ruff check .
	$(RUN) ruff format --check .

format: install ## apply ruff fixes and formatting
	$(RUN) ruff check --fix .
	$(RUN) ruff format .

clean: ## remove run outputs and caches (keeps mlflow.db, mlartifacts/ and the data)
	rm -rf outputs logs lightning_logs .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path './.venv/*' -exec rm -rf {} +
