#!/bin/bash
# EKS Image Prefetch warm volume builder, step 1 of 3. Runs as root on the builder instance only (never on a
# cluster node): puts /var/lib/containerd on the data volume, so that the prefetch document pulls onto it, except its
# content store: that one stays on the root disk during the build (the seal copies back what it holds then), so that
# the compressed layer blobs a pull writes, and deletes once unpacked (discard_unpacked_layers), never touch the data
# volume. EBS has no TRIM: a snapshot stores every block ever written, freed or not.
# Prints one JSON line; exits non-zero on any failure (the builder is then terminated).
set -euo pipefail
export LC_ALL=C
LABEL=eks-prefetch
STAMP=.eks-image-prefetch-warm.json
ROOT=/var/lib/containerd
STAGING=/mnt/eks-prefetch-warm
SCRATCH=/var/lib/eks-prefetch-warm-content
CONTENT=io.containerd.content.v1.content
fail() { printf '{"step":"prepare","error":"%s"}\n' "$1"; exit 1; }

version=$(containerd --version 2>/dev/null | awk '{print $3}') || true
[ -n "$version" ] || fail "containerd not found"
token=$(curl -sf -m 5 -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 60" http://169.254.169.254/latest/api/token) || fail "no IMDSv2 token"
ami=$(curl -sf -m 5 -H "X-aws-ec2-metadata-token: $token" http://169.254.169.254/latest/meta-data/ami-id) || fail "no AMI id"

# The data volume: the one EBS disk that is not the root disk (instance-store disks are never it).
root_disk=$(lsblk -no PKNAME "$(findmnt -no SOURCE /)" | head -n 1)
mapfile -t disks < <(lsblk -dno NAME,MODEL | awk -v root="$root_disk" '$1 != root && /Elastic Block Store/ {print $1}')
[ "${#disks[@]}" -eq 1 ] || fail "expected one data volume, found ${#disks[@]}"
device=/dev/${disks[0]}

systemctl stop containerd
# A step run again: its content store's bind mount first (the copy below reads the volume's own).
! mountpoint -q "$ROOT/$CONTENT" || umount "$ROOT/$CONTENT"
fresh=false
mkdir -p "$STAGING"
if [ "$(blkid -o value -s LABEL "$device" 2>/dev/null || true)" = "$LABEL" ]; then
  mount "$device" "$STAGING"
  # A previous snapshot of another AMI or containerd is no base: its state would not be this AMI's.
  if ! grep -q "\"containerd\":\"$version\"" "$STAGING/$STAMP" 2>/dev/null || ! grep -q "\"ami\":\"$ami\"" "$STAGING/$STAMP"; then
    umount "$STAGING"
    fresh=true
  fi
else
  fresh=true
fi
if [ "$fresh" = true ]; then
  mkfs.xfs -q -f -L "$LABEL" "$device"
  mount "$device" "$STAGING"
  # The AMI's own state first: AL2023's sandbox (pause) image is baked in and cannot be pulled.
  cp -a "$ROOT/." "$STAGING/"
fi
rm -f "$STAGING/$STAMP"
xfs_growfs -d "$STAGING" >/dev/null
umount "$STAGING"
mount "$device" "$ROOT"
# The content store on the root disk (a copy of the volume's: the manifests and configs of the images it holds), over
# the volume's own, which the seal brings up to date.
mkdir -p "$ROOT/$CONTENT"
rm -rf "$SCRATCH"
cp -a "$ROOT/$CONTENT" "$SCRATCH"
mount --bind "$SCRATCH" "$ROOT/$CONTENT"
systemctl start containerd
printf '{"step":"prepare","device":"%s","fresh":%s,"containerd":"%s","ami":"%s","content":"%s"}\n' \
  "$device" "$fresh" "$version" "$ami" "$SCRATCH"
