# The project's two commands: `make demo` (the application end to end on this machine) and `make test` (every gate).
# `make bench` measures every figure against its target and baseline, and writes BENCHMARKS.md.
SHELL := /bin/bash
.DEFAULT_GOAL := test

VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
export AWS_DEFAULT_REGION ?= us-east-1
export SAM_CLI_TELEMETRY := 0

# sam build needs the Lambda runtime's python3.13 on PATH; pyenv keeps one outside the default PATH.
PY313_DIR := $(shell command -v python3.13 >/dev/null 2>&1 && python3.13 -c 'import sys; print(sys.prefix)' 2>/dev/null || pyenv prefix 3.13.0 2>/dev/null || pyenv prefix 3.13 2>/dev/null)
SAM_PATH := $(if $(PY313_DIR),$(PY313_DIR)/bin:,)$(PATH)

system-deps:
	bash scripts/system-deps.sh

.PHONY: system-deps test check venv lint cfn-lint sam-validate sam-build shellcheck unit integration node lock clean template

$(VENV)/.installed: requirements-dev.txt
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

# Tests run on one worker per core (pytest-xdist; those that attach loop devices on one worker, tests/conftest.py's
# LOOP_DEVICES); the slowest are listed at the end, and pyproject.toml's per-test timeout turns a hidden wait into a
# named failure.
PYTEST_PARALLEL := -n auto --dist loadgroup --durations=15

# The full gate: every check and every test, the node tests on both containerd releases and the demo's end to end.
test: system-deps venv lint cfn-lint sam-validate sam-build shellcheck
	$(BIN)/pytest $(PYTEST_PARALLEL)

# The everyday loop: lint, and every test that needs no root, no containerd and no demo (not marked `node`).
check: venv lint shellcheck
	$(BIN)/pytest $(PYTEST_PARALLEL) -m "not node"

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

cfn-lint: venv
	$(BIN)/cfn-lint template.yaml

sam-validate: venv
	$(BIN)/sam validate --lint

sam-build: venv
	PATH="$(SAM_PATH)" $(BIN)/sam build --parallel

shellcheck: venv
	shellcheck --shell=bash document/prefetch.sh document/unpin.sh document/warm_boot.sh document/warm_prepare.sh \
		document/warm_seal.sh

# The SSM documents' content in template.yaml, from document/ (content.yaml and prefetch.sh; unpin.yaml and
# unpin.sh; warm_prepare.yaml and warm_prepare.sh; warm_seal.yaml and warm_seal.sh) and the values the scripts share
# with the functions (eks_prefetch/node_contract.py). Commit the result: `sam deploy` reads template.yaml.
template: venv
	PYTHONPATH=layers/prefetch $(PY) -m document.generate

unit: venv
	$(BIN)/pytest tests/unit

integration: venv
	$(BIN)/pytest tests/integration

# The document's script on a real containerd and registry (root). Also part of `make test`. Without root or the
# binaries they fail; SKIP_NODE_TESTS=1 skips them instead, and the run ends with a notice of what did not run.
node: venv
	$(BIN)/pytest tests/node

.PHONY: demo invoke e2e
# The application end to end on real containerd nodes, and the emulator without them. Also part of `make test`.
e2e: venv
	$(BIN)/pytest tests/e2e

# The whole application locally: moto stack from template.yaml, real handlers, a Run Command agent, real containerd
# nodes pulling from a registry on 127.0.0.1 (root; dry-run nodes otherwise). Stops everything it starts.
demo: system-deps venv
	$(PY) -m harness.demo

# Docker-free counterpart of `sam local invoke FUNCTION -e EVENT`, against the emulated stack.
# PARAMS="Key=Value ...": parameter overrides of the emulated stack, as `sam deploy --parameter-overrides`.
FUNCTION ?= EcrPushFunction
EVENT ?= events/ecr_push/push-tagged.json
invoke: venv
	@$(PY) -m harness.invoke "$(FUNCTION)" "$(EVENT)" $(if $(PARAMS),--parameter-overrides $(PARAMS))

.PHONY: status
# The operator's view of a deployed stack: per repository, the newest image, the coverage and the nodes missing it
# with their last error. `make status STACK=<name> [REGION=<region>]`. make exits 2 on any failure; for the command's
# own status (0 at 100%, 1 below, 2 cannot read), run scripts/operator.sh status --stack <name>.
# The region comes from REGION, else the AWS configuration: the us-east-1 default above is for the tests only.
status: venv
	@test -n "$(STACK)" || { echo "usage: make status STACK=<stack name> [REGION=<region>]" >&2; exit 2; }
	@$(if $(filter file,$(origin AWS_DEFAULT_REGION)),env -u AWS_DEFAULT_REGION) PYTHON=$(PY) \
	  scripts/operator.sh status --stack "$(STACK)" $(if $(REGION),--region "$(REGION)")

.PHONY: preflight
# The deployed stack against the account: repositories and their images, nodes online in SSM, the node roles'
# policies, the ECR/S3 endpoints. Exits 0 ready, 1 findings (each with what to do), 2 cannot read.
# `make preflight STACK=<name> [REGION=<region>]`.
preflight: venv
	@test -n "$(STACK)" || { echo "usage: make preflight STACK=<stack name> [REGION=<region>]" >&2; exit 2; }
	@$(if $(filter file,$(origin AWS_DEFAULT_REGION)),env -u AWS_DEFAULT_REGION) PYTHON=$(PY) \
	  scripts/operator.sh preflight --stack "$(STACK)" $(if $(REGION),--region "$(REGION)")

.PHONY: unpin
# What deleting the stack does, on demand: one command, by the node tag, that removes this application's pins (and
# no one else's) from every node. `make unpin STACK=<name> [REGION=<region>]`.
unpin: venv
	@test -n "$(STACK)" || { echo "usage: make unpin STACK=<stack name> [REGION=<region>]" >&2; exit 2; }
	@$(if $(filter file,$(origin AWS_DEFAULT_REGION)),env -u AWS_DEFAULT_REGION) PYTHON=$(PY) \
	  scripts/operator.sh unpin --stack "$(STACK)" $(if $(REGION),--region "$(REGION)")

.PHONY: bench bench-node
# Every figure next to its target and its baseline, measured in the same run: writes BENCHMARKS.md (commit it).
# Section 4 needs root and the node binaries (make system-deps); without them its rows say "not measured".
bench: venv sam-build
	$(PY) -m bench

# Section 4 alone (the document against a bare `ctr images pull`), printed; BENCHMARKS.md is left as it is.
bench-node: venv
	$(PY) -m bench --only node-overhead

lock:
	rm -rf /tmp/eks-prefetch-lock && python3 -m venv /tmp/eks-prefetch-lock
	/tmp/eks-prefetch-lock/bin/pip install --quiet -r requirements-dev.in
	{ echo "# Generated from requirements-dev.in: pip freeze of a clean venv. Regenerate with 'make lock'."; \
	  /tmp/eks-prefetch-lock/bin/pip freeze; } > requirements-dev.txt

clean:
	rm -rf $(VENV) .aws-sam .pytest_cache .ruff_cache
