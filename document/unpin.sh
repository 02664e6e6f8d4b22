#!/bin/bash
# EKS Image Prefetch uninstall. Runs as root under the SSM agent. The prefetch script labels what it pins
# @OUR_PIN_LABEL@, and never an image someone else pinned: only those lose the pin here.
# Prints one JSON summary; exits 0 only if every pin of ours was removed.
set -uo pipefail
umask 077
export LC_ALL=C
export CONTAINERD_ADDRESS="${CONTAINERD_ADDRESS:-/run/containerd/containerd.sock}"
unset CONTAINERD_NAMESPACE
PIN_LABEL='@PIN_LABEL@'
OUR_LABEL='@OUR_PIN_LABEL@'
PUSHED_LABEL='@PUSHED_AT_LABEL@'

fatal() { printf '{"summary":true,"unpinned":0,"failed":0,"error":"%s"}\n' "$1"; exit 2; }
command -v ctr >/dev/null 2>&1 || fatal "ctr not found on PATH"

# A prefetch run in progress may be pinning right now: wait for its lock, within this step's timeout.
if command -v flock >/dev/null 2>&1 && { exec 9>"${PREFETCH_LOCK_FILE:-@LOCK_FILE@}"; } 2>/dev/null; then
  flock -w 240 9 || true
fi

names=$(timeout -k 5 60 ctr -n k8s.io images ls -q "labels.\"$OUR_LABEL\"") || fatal "cannot list images"
unpinned=0
failed=0
while IFS= read -r name; do
  [ -n "$name" ] || continue
  if timeout -k 5 60 ctr -n k8s.io images label "$name" "$PIN_LABEL=" "$OUR_LABEL=" "$PUSHED_LABEL=" >/dev/null 2>&1; then
    unpinned=$((unpinned + 1))
  else
    failed=$((failed + 1))
  fi
done <<<"$names"
printf '{"summary":true,"unpinned":%d,"failed":%d}\n' "$unpinned" "$failed"
[ "$failed" -eq 0 ]
