#!/usr/bin/env bash
# The operator's commands with their own exit status, for scripts (make turns any failure into its own 2):
#   scripts/operator.sh status|preflight|unpin --stack <name> [--region <region>]
# status: 0 every repository at 100%, 1 below, 2 cannot read. preflight: 0 ready, 1 findings, 2 cannot read.
# unpin: 0 sent, 2 not sent. The commands are prefetchctl's (python -m prefetchctl), with the layer on PYTHONPATH.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHONPATH="$root/layers/prefetch:$root" exec "${PYTHON:-$root/.venv/bin/python}" -m prefetchctl "$@"
