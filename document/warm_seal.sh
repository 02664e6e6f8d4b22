#!/bin/bash
# EKS Image Prefetch warm volume builder, step 3 of 3. Runs as root on the builder instance only: stops containerd
# and unmounts its volume, so that the snapshot is consistent, and stamps what it holds for the node-side guard. The
# content store was on the root disk during the build (WarmPrepareDocument): its blobs left after the pull (manifests,
# configs, indexes: the layer blobs are discarded once unpacked) are copied onto the volume, and only those, so that
# the volume's metadata names no blob it lacks and the snapshot stores no layer blob written then deleted.
# Prints exactly one JSON line (the state machine parses it); exits non-zero on any failure.
set -euo pipefail
export LC_ALL=C
LABEL=eks-prefetch
STAMP=.eks-image-prefetch-warm.json
ROOT=/var/lib/containerd
SCRATCH=/var/lib/eks-prefetch-warm-content
CONTENT=io.containerd.content.v1.content
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
if mountpoint -q "$ROOT/$CONTENT"; then
  umount "$ROOT/$CONTENT" || fail "cannot unmount the content store"
  [ -d "$SCRATCH/blobs" ] || fail "no content store at $SCRATCH"
  # Blobs are named by their digest: one of that name on the volume already is the same. So only blobs the build
  # added are written (a build from the previous snapshot changes no block for what it kept), and those it no longer
  # has are removed. Ingests (a fetch cut short) are not copied: nothing refers to them once containerd restarts.
  volume=$ROOT/$CONTENT/blobs
  mkdir -p "$volume" "$ROOT/$CONTENT/ingest"
  (cd "$volume" && find . -type f) | sort >"$SCRATCH.volume"
  (cd "$SCRATCH/blobs" && find . -type f) | sort >"$SCRATCH.kept"
  while IFS= read -r blob; do rm -f "$volume/$blob"; done < <(comm -23 "$SCRATCH.volume" "$SCRATCH.kept")
  while IFS= read -r blob; do
    mkdir -p "$volume/$(dirname "$blob")"
    cp -a "$SCRATCH/blobs/$blob" "$volume/$blob" || fail "cannot copy a blob onto the data volume"
  done < <(comm -13 "$SCRATCH.volume" "$SCRATCH.kept")
  find "$ROOT/$CONTENT/ingest" -mindepth 1 -delete
  rm -rf "$SCRATCH" "$SCRATCH.volume" "$SCRATCH.kept"
fi
printf '%s\n' "$stamp" >"$ROOT/$STAMP"
sync
umount "$ROOT" || fail "cannot unmount the data volume"
printf '%s\n' "$stamp"
