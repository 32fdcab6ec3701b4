# qwen-deploy: every target works on a fresh Debian machine as root (CI runs `make test`).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROFILE ?= tri-tier
GPUS_FILE ?= tests/fixtures/gpus/3x-rtx4090.json
DEMO_DEPLOYMENT ?= demo

.PHONY: help setup venv docker images demo demo-down test test-unit test-integration check lint format typecheck bench vllm-check clean

help:
	@echo "make demo       set up everything and deploy tri-tier with the vLLM stand-in (no GPU needed)"
	@echo "make test       set up everything and run lint, type checks, unit and integration tests"
	@echo "make test-unit  unit tests only (seconds, no Docker)"
	@echo "make check      ruff lint + format check + mypy"
	@echo "make bench      benchmarks in benchmarks/ (needs Docker and the stand-in image)"

$(BIN)/qwen-deploy: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

venv: $(BIN)/qwen-deploy

docker:
	bash scripts/docker-up.sh

images: docker
	bash scripts/build-images.sh

setup: venv images

demo: setup
	$(BIN)/qwen-deploy --deployment $(DEMO_DEPLOYMENT) up --profile $(PROFILE) --gpus-file $(GPUS_FILE) --engine stand-in
	$(BIN)/qwen-deploy --deployment $(DEMO_DEPLOYMENT) status
	$(BIN)/qwen-deploy --deployment $(DEMO_DEPLOYMENT) endpoints
	@echo "stop it with: make demo-down"

demo-down: venv
	$(BIN)/qwen-deploy --deployment $(DEMO_DEPLOYMENT) down

test: setup check
	TESTCONTAINERS_RYUK_DISABLED=true $(BIN)/pytest -q

test-unit: venv
	$(BIN)/pytest -q tests/unit

test-integration: setup
	TESTCONTAINERS_RYUK_DISABLED=true $(BIN)/pytest -q tests/integration

check: lint typecheck

lint: venv
	$(BIN)/ruff check deployer tests benchmarks
	$(BIN)/ruff format --check deployer tests benchmarks

format: venv
	$(BIN)/ruff check --fix deployer tests benchmarks
	$(BIN)/ruff format deployer tests benchmarks

typecheck: venv
	$(BIN)/mypy deployer

bench: setup
	$(BIN)/python benchmarks/bench_startup.py
	$(BIN)/python benchmarks/bench_cli.py
	$(BIN)/python benchmarks/bench_loadgen.py

# The real vLLM CPU build, to check rendered commands against vLLM's own argument parser.
vllm-check: venv
	bash scripts/vllm-check.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info build dist
