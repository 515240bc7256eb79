# Developer entry points. `make` alone lists the targets.
# Add a target with a `## description` comment after its name so that `make help` lists it.

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
PYTHON := $(VENV)/bin/python
# Written after a successful `pip install`; redone when tests/requirements.txt changes.
VENV_STAMP := $(VENV)/.requirements-installed
PROVIDER ?= openai

.PHONY: help venv tools build demo test-e2e-lambda

help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) \
		| awk 'BEGIN {FS = ":.*## "} {printf "  %-18s %s\n", $$1, $$2}'

venv: $(VENV_STAMP) ## Python venv with the test and demo tooling (moto, boto3, cargo-lambda, pytest)

$(VENV_STAMP): tests/requirements.txt
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet -r tests/requirements.txt
	touch $@

# The compressed-upload tests make their files with the tools users have: gzip, Python's
# gzip module and pigz (installed here from Debian's packages when missing).
tools: ## System tools the tests use (pigz)
	@command -v pigz >/dev/null || { apt-get update -qq && apt-get install -y -qq pigz >/dev/null; }

build: ## Debug build of the three functions, the CLI and the provider emulator
	cargo build --bins -p submit -p poll -p collect -p batchline-emulator -p batchline-cli

# The demo builds the binaries itself (timed), like `make build`.
demo: venv ## One job through moto + emulator + cargo lambda watch (PROVIDER=openai|anthropic|google|gemini)
	$(PYTHON) tests/scripts/demo.py --provider $(PROVIDER)

test-e2e-lambda: venv ## End-to-end test through the real binaries under cargo lambda watch
	$(PYTHON) -m pytest tests/e2e/test_lambda_watch.py -v

.PHONY: test lint
lint: ## cargo fmt --check, clippy with warnings as errors, and the library without AWS (--no-default-features)
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo build -p batchline --no-default-features
	cargo clippy -p batchline --no-default-features -- -D warnings

test: venv tools lint build ## Everything CI runs: lint, Rust unit + end-to-end tests, SDK conformance, template checks
	rm -rf target/reliability
	python3 tests/scripts/check_layers.py --strict
	cargo test --workspace
	$(PYTHON) -m pytest -q tests/conformance tests/infra tests/e2e
	bash infra/check.sh
	$(PYTHON) tests/scripts/reliability_report.py

# The Python reference library lives in its own venv so that the test venv is untouched.
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.requirements-installed
# e.g. BENCH_ARGS="--quick" for a smoke run, "--only parse --runs 7".
BENCH_ARGS ?=

# e.g. SCALE_ARGS="--rows 100000" for a quicker run; see tests/bench/scale.rs.
SCALE_ARGS ?=

.PHONY: bench bench-venv bench-scale
bench-venv: $(BENCH_STAMP) ## Separate venv with the Python reference library (instructor) for `make bench`

$(BENCH_STAMP): tests/bench/requirements.txt
	test -x $(BENCH_VENV)/bin/python || python3 -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet -r tests/bench/requirements.txt
	touch $@

bench: bench-venv ## Throughput, memory and cold start vs the Python reference library, as one table (BENCH_ARGS=...)
	cargo build --release -p submit -p poll -p collect
	cargo build --release -p batchline-emulator --bin batchline-bench
	"$${CARGO_TARGET_DIR:-target}/release/batchline-bench" $(BENCH_ARGS)

bench-scale: venv ## One job of 1,000,000 rows through moto + emulator + the functions: time, memory, requests, cost (SCALE_ARGS=...)
	cargo build --release -p batchline-emulator --bin batchline-bench
	"$${CARGO_TARGET_DIR:-target}/release/batchline-bench" scale $(SCALE_ARGS)
