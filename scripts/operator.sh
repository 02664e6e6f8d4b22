#!/usr/bin/env bash
# The operator's commands with their own exit status, for scripts (make turns any failure into its own 2):
#   scripts/operator.sh status|preflight|unpin --stack <name> [--region <region>]
# status: 0 every repository at 100%, 1 below, 2 cannot read. preflight: 0 ready, 1 findings, 2 cannot read.
# unpin: 0 sent, 2 not sent.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
case "${1:-}" in
  status) module=report ;;
  preflight) module=preflight ;;
  unpin) module=uninstall ;;
  *)
    echo "usage: $0 status|preflight|unpin --stack <name> [--region <region>]" >&2
    exit 2
    ;;
esac
shift
PYTHONPATH="$root/layers/prefetch" exec "${PYTHON:-$root/.venv/bin/python}" -m "eks_prefetch.$module" "$@"
