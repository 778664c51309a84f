# Self-bootstrapping: needs only python3, pip and make. uv comes from PyPI into
# .tools/ when it is not on PATH; nothing else is downloaded but packages.
SHELL := /bin/bash
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON := $(PYTHON)
VENV := .venv
RUN := $(VENV)/bin
# The demo's own environment: the core and its small pure-Python dependencies from uv.lock, nothing
# to compile, so `make demo` needs neither the dev tools nor a C compiler.
DEMO_VENV := .venv-demo
# melange 7.2.0 from PyPI in a venv of its own, for the rolling-upgrade test
# (plugins/melange_localsqs/tests/test_upgrade_from_7x.py); the pinned list says why --no-deps.
MELANGE7_VENV := build/melange7-venv
MELANGE7_REQUIREMENTS := plugins/melange_localsqs/tests/melange7/requirements.txt

.PHONY: install demo test test-localstack lint typecheck bench dist docs docs-build clean

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check "uv>=0.5,<1"

$(VENV)/.installed: pyproject.toml uv.lock $(wildcard plugins/*/pyproject.toml) examples/third_party_backend/pyproject.toml | $(UV)
	$(UV) sync --locked --all-extras
	touch $@

install: $(VENV)/.installed  ## Create .venv with melange, the example plugin and the dev tools.

$(DEMO_VENV)/.installed: pyproject.toml uv.lock | $(UV)
	UV_PROJECT_ENVIRONMENT=$(DEMO_VENV) $(UV) sync --locked --no-dev --package melange
	touch $@

demo: $(DEMO_VENV)/.installed  ## Run the payments demo on the embedded memory backend (core only).
	$(DEMO_VENV)/bin/melange demo

# Rebuilt from scratch when the pinned list changes. The import check (-I: not the melange 8
# of the working directory) fails the build rather than the test.
$(MELANGE7_VENV)/.installed: $(MELANGE7_REQUIREMENTS)
	rm -rf $(MELANGE7_VENV)
	$(PYTHON) -m venv $(MELANGE7_VENV)
	$(MELANGE7_VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps -r $(MELANGE7_REQUIREMENTS)
	$(MELANGE7_VENV)/bin/python -I -c "import melange, melange.backends.sqs.localsqs, melange.serializers.registry; assert melange.__version__ == '7.2.0', melange.__version__"
	touch $@

# Three pytest-xdist workers on the two cores, taking tests as they free up (worksteal): the
# tests mostly wait on brokers and timeouts. Measured on this 2-core machine: 14 min 31 s of
# tests; four workers saved 37 s but loaded the machine enough to break timing-sensitive tests
# (a Pub/Sub deadline, a Service Bus expiry). One process: add `-p no:xdist`.
test: install lint $(MELANGE7_VENV)/.installed  ## The whole suite: lint, type check, tests (with the conformance report).
	$(RUN)/pytest -n 3 --dist worksteal --melange-report=build/conformance

test-localstack: install  ## The localsqs tests against LocalStack run natively (no Docker; needs Python >= 3.13).
	plugins/melange_localsqs/scripts/localstack.sh run $(RUN)/pytest plugins/melange_localsqs/tests -k "LocalStack or localstack" --melange-report=build/conformance-localstack

lint: install  ## ruff, mypy --strict and the layering contracts (.importlinter).
	$(RUN)/ruff check .
	$(RUN)/ruff format --check melange plugins
	$(RUN)/mypy melange
	$(RUN)/mypy plugins/melange_aws/src plugins/melange_localsqs/src plugins/melange_gcp/src plugins/melange_azure/src plugins/melange_rabbitmq/src
	$(RUN)/lint-imports --no-logo

bench: install  ## Benchmarks (results go to benchmarks/README.md by hand).
	$(RUN)/python benchmarks/import_time.py
	$(RUN)/python benchmarks/round_trip.py
	$(RUN)/python benchmarks/sqs_throughput.py
	$(RUN)/python benchmarks/consumer_throughput.py
	$(RUN)/python benchmarks/runtime_steps.py
	$(RUN)/python benchmarks/consumer_instructions.py
	$(RUN)/python benchmarks/gcp_throughput.py
	$(RUN)/python benchmarks/rabbitmq_throughput.py

# NO_MKDOCS_2_WARNING hides only Material's banner about MkDocs 2.
docs: install  ## Serve the documentation site on http://127.0.0.1:8000, reloading on edits.
	NO_MKDOCS_2_WARNING=1 $(RUN)/mkdocs serve -a 127.0.0.1:8000

docs-build: install  ## Build the documentation site into build/site; any warning fails it.
	NO_MKDOCS_2_WARNING=1 $(RUN)/mkdocs build --strict -d build/site

dist: | $(UV)  ## Wheels and sdists of melange and the five plugins into dist/ (see docs/installing.md).
	UV=$(UV) scripts/build_dists.sh dist

clean:
	rm -rf $(VENV) $(DEMO_VENV) .tools dist build .mypy_cache .ruff_cache .pytest_cache .import_linter_cache
