#!/bin/bash
# EKS Image Prefetch warm volume builder, step 3 of 3. Runs as root on the builder instance only: stops containerd
# and unmounts its volume, so that the snapshot is consistent, and stamps what it holds for the node-side guard.
# Prints exactly one JSON line (the state machine parses it); exits non-zero on any failure.
set -euo pipefail
export LC_ALL=C
LABEL=eks-prefetch
STAMP=.eks-image-prefetch-warm.json
ROOT=/var/lib/containerd
fail() { printf '{"step":"seal","error":"%s"}\n' "$1"; exit 1; }

device=$(findmnt -no SOURCE "$ROOT") || fail "containerd root is not mounted"
[ "$(blkid -o value -s LABEL "$device")" = "$LABEL" ] || fail "containerd root is not the data volume"
version=$(containerd --version 2>/dev/null | awk '{print $3}') || true
[ -n "$version" ] || fail "containerd not found"
token=$(curl -sf -m 5 -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 60" http://169.254.169.254/latest/api/token) || fail "no IMDSv2 token"
ami=$(curl -sf -m 5 -H "X-aws-ec2-metadata-token: $token" http://169.254.169.254/latest/meta-data/ami-id) || fail "no AMI id"
stamp=$(printf '{"containerd":"%s","ami":"%s","architecture":"%s","sealedAt":"%s"}' \
  "$version" "$ami" "$(uname -m)" "$(date -u +%Y-%m-%dT%H:%M:%SZ)")

systemctl stop containerd
printf '%s\n' "$stamp" >"$ROOT/$STAMP"
sync
umount "$ROOT" || fail "cannot unmount the data volume"
printf '%s\n' "$stamp"
