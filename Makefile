# convlens: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
RUN := $(UV) run --frozen
ARGS ?=
HOST ?= 127.0.0.1
PORT ?= 3000
UI_PORT ?= 5000
MODEL ?=
STORE ?= sqlite:///$(CURDIR)/mlflow.db
ARTIFACTS ?= $(CURDIR)/mlartifacts
COMPOSE ?= docker compose
# Where the store, the BentoML home and the UI are is said once, in conf/paths/default.yaml;
# every step composes that config, so ARGS="paths.tracking_uri=... registry.name=..." reach all.

.PHONY: help install train ui test lint format clean package serve containerize
.PHONY: release evaluate register sweep server up up-train down
.PHONY: sweep-ui

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# --compile-bytecode: every later process imports torch, Lightning and MLflow from .pyc files,
# even where Python may not write them (PYTHONDONTWRITEBYTECODE): 9 s less start-up each.
install: ## install uv if missing, then the locked dependencies (uv sync --frozen)
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --frozen --compile-bytecode

train: install ## train, log to MLflow, register; overrides via ARGS="optimizer.lr=1e-3 ..."
	$(RUN) python -m pipelines.train $(ARGS)

release: install ## train -> evaluate -> register -> promote if better -> package; ARGS=hydra overrides
	$(RUN) python -m pipelines.release $(ARGS)

evaluate: install ## test the newest run's logged model on the test set; ARGS="--run-id ID ..."
	$(RUN) python -m pipelines.evaluate $(ARGS)

register: install ## register the newest run's model, promote if better; ARGS="--run-id ID ..."
	$(RUN) python -m pipelines.register $(ARGS)

# The study is in sweep.storage (conf/sweep/default.yaml: ./optuna.db, or CONVLENS_SWEEP_STORAGE);
# the same command again resumes it, and on another machine with the same storage joins it.
WORKERS ?= 1
SWEEP_UI_PORT ?= 8080
sweep: install ## Optuna search (conf/hparams_search) with WORKERS=n processes, resumable; then the ranking
	$(RUN) python -m pipelines.sweep hparams_search=mnist_optuna sweep.workers=$(WORKERS) $(ARGS)
	$(RUN) python -m pipelines.sweep_report hparams_search=mnist_optuna $(ARGS)

sweep-ui: install ## optuna-dashboard on the sweep's storage at http://HOST:SWEEP_UI_PORT (127.0.0.1:8080)
	$(RUN) optuna-dashboard --host $(HOST) --port $(SWEEP_UI_PORT) \
		"$$($(RUN) python -m pipelines.sweep --storage-url hparams_search=mnist_optuna $(ARGS))"

server: install ## MLflow tracking server on HOST:UI_PORT, STORE=backend URI, ARTIFACTS=destination
	$(RUN) mlflow server --backend-store-uri "$(STORE)" --artifacts-destination "$(ARTIFACTS)" \
		--host $(HOST) --port $(UI_PORT) --workers 2

up: ## docker compose: postgres, minio, mlflow, serving (needs .env); MLFLOW_UI=1 publishes the UI
	@test -f .env || { echo "error: no .env: cp .env.example .env, then set its passwords" >&2; exit 2; }
	$(COMPOSE) $(if $(MLFLOW_UI),-f docker-compose.yml -f docker/compose.mlflow-ui.yml) up -d --build

up-train: ## the release pipeline in the compose trainer container; ARGS=hydra overrides
	@test -f .env || { echo "error: no .env: cp .env.example .env, then set its passwords" >&2; exit 2; }
	$(COMPOSE) --profile train run --rm --build trainer $(or $(ARGS),experiment=fast)

down: ## docker compose: stop and remove the containers (the volumes stay)
	$(COMPOSE) --profile train --profile train-gpu down

ui: install ## MLflow UI on the training store at http://127.0.0.1:5000 (UI_PORT=5001 for another)
	$(RUN) python -m pipelines.ui $(if $(filter command line,$(origin UI_PORT)),paths.mlflow_ui=http://127.0.0.1:$(UI_PORT)) $(ARGS)

package: install ## MLflow @champion into the BentoML store (./bentoml), then build the Bento
	$(RUN) python -m pipelines.package $(ARGS)

serve: install ## serve @champion as it is now at http://HOST:PORT (127.0.0.1:3000); MODEL=name:tag pins one
	$(RUN) python -m pipelines.serve --host $(HOST) --port $(PORT) $(if $(MODEL),--model $(MODEL)) $(ARGS)

.PHONY: feedback
feedback: install ## users' feedback (POST /feedback): rows per label; ARGS="--export DIR", "--delete SHA256", "--delete-all --yes"
	$(RUN) python -m pipelines.feedback $(ARGS)

containerize: install ## Docker image convlens:latest of the champion's Bento (needs Docker)
	$(RUN) python -m pipelines.package --containerize convlens:latest $(ARGS)

# Two pytest workers (pytest-xdist; a test file stays on one worker): much of a test's time is
# a training subprocess or a server starting, which leaves a core idle in a one-worker run.
TEST_WORKERS ?= 2
test: install ## run the test suite (needs CONVLENS_DATA_DIR pointing at the MNIST folder)
	$(RUN) pytest -n $(TEST_WORKERS) --durations=40

.PHONY: audit
AUDIT_UNREACHABLE ?= fail
# A canary with published advisories: when pip-audit finds none in it, its vulnerability source
# is unreachable, which is reported as "nothing audited" (fail, or warn with
# AUDIT_UNREACHABLE=warn), never mistaken for a clean audit.
AUDIT_CANARY := requests==2.19.0
audit: install ## pip-audit the locked dependencies (uv.lock); accepted findings in audit-ignore.txt
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(UV) export --frozen --no-hashes --no-emit-project --all-groups --format requirements-txt \
		--quiet -o "$$tmp/requirements.txt" && \
	echo "$(AUDIT_CANARY)" > "$$tmp/canary.txt" && \
	{ $(RUN) pip-audit --no-deps --disable-pip --progress-spinner off -f json -o "$$tmp/canary.json" \
		-r "$$tmp/canary.txt" >/dev/null 2>&1 || true; } && \
	if ! $(RUN) python -c "import json, sys; report = json.load(open(sys.argv[1])); \
		sys.exit(not any(d.get('vulns') for d in report['dependencies']))" "$$tmp/canary.json" 2>/dev/null; then \
		echo "make audit: NOTHING AUDITED: pip-audit's vulnerability source is unreachable from here" \
			"(it found no advisory for the canary $(AUDIT_CANARY))." >&2; \
		[ "$(AUDIT_UNREACHABLE)" = warn ] && exit 0 || exit 1; \
	fi && \
	$(RUN) pip-audit --strict --no-deps --disable-pip --progress-spinner off -r "$$tmp/requirements.txt" \
		$$(grep -oE '^[A-Za-z0-9][A-Za-z0-9_.:-]*' audit-ignore.txt 2>/dev/null | sed 's/^/--ignore-vuln /')

.PHONY: bench
bench: install ## benchmarks of issues 5 and 15 (~18 min, 2 cores): results JSON + goals table (peers first); ARGS=--quick
	$(RUN) python -m benchmarks.run_all $(ARGS)

lint: install ## ruff check and format check
	$(RUN) ruff check .
	$(RUN) ruff format --check .

format: install ## apply ruff fixes and formatting
	$(RUN) ruff check --fix .
	$(RUN) ruff format .

clean: ## remove run outputs and caches (keeps mlflow.db, mlartifacts/ and the data)
	rm -rf outputs logs lightning_logs .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path './.venv/*' -exec rm -rf {} +
