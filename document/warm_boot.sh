#!/bin/bash
# EKS Image Prefetch warm boot: the user-data part (text/x-shellscript) for AL2023 EKS nodes launched with the warm
# volume (docs/warm-volumes.md, "Node side"). cloud-init runs it in its final stage, and nodeadm-run.service, which
# starts containerd, runs after cloud-final.service: so containerd has not started yet when this runs.
#
# It mounts the volume whose filesystem is labelled eks-prefetch (found by label: NVMe renames /dev/xvdb) at
# containerd's root and grows the filesystem to the volume's size, if the builder's stamp on it says it was sealed by
# this node's containerd version on this node's AMI. In any other case the volume stays unmounted and the node boots
# cold, as it would without this part. It never fails the boot: it exits 0 on every path, after one line (stdout,
# which cloud-init copies to the console, and the journal) saying warm or cold and why. A second run does nothing.
#
# The environment can point it elsewhere (the node test does; on a node, leave it unset): EKS_PREFETCH_WARM_ROOT
# (containerd's root), EKS_PREFETCH_WARM_STATE (containerd's state dir), EKS_PREFETCH_WARM_CONTAINERD (the binary),
# EKS_PREFETCH_WARM_IMDS (the instance metadata endpoint) and EKS_PREFETCH_WARM_LABEL (the filesystem label).
set -u
umask 022
export LC_ALL=C
# What WarmPrepareDocument and WarmSealDocument write (template.yaml): the label, and the stamp at the volume's top.
LABEL=${EKS_PREFETCH_WARM_LABEL:-eks-prefetch}
STAMP=.eks-image-prefetch-warm.json
ROOT=${EKS_PREFETCH_WARM_ROOT:-/var/lib/containerd}
STATE=${EKS_PREFETCH_WARM_STATE:-/run/containerd}
CONTAINERD=${EKS_PREFETCH_WARM_CONTAINERD:-containerd}
IMDS=${EKS_PREFETCH_WARM_IMDS:-http://169.254.169.254}
# A stamp value goes into the log line and a comparison only: version- and id-like text, nothing else.
VALUE_RE='^[A-Za-z0-9][A-Za-z0-9._+~:-]{0,127}$'

said=false
staging=""
say() {
  said=true
  printf 'eks-image-prefetch: %s\n' "$1"
  if command -v logger >/dev/null 2>&1; then
    logger -t eks-image-prefetch -- "$1" >/dev/null 2>&1 || true
  fi
}
cold() {
  say "cold boot: $1; $ROOT stays on the root disk"
  exit 0
}
# Every exit goes through here: the staging mount never stays behind, and nothing ends without its line or with a
# non-zero status (cloud-init would report the user data as failed).
finish() {
  if [ -n "$staging" ]; then
    umount "$staging" >/dev/null 2>&1
    rmdir "$staging" >/dev/null 2>&1
  fi
  if [ "$said" = false ]; then
    say "cold boot: the warm boot script stopped unexpectedly; $ROOT stays on the root disk"
  fi
  exit 0
}
trap finish EXIT

[[ $LABEL =~ ^[A-Za-z0-9_-]{1,12}$ ]] || cold "the label '$LABEL' is not a filesystem label"

# Idempotent: a second run finds the volume in place (warm) or finds the root taken by something else (cold).
current=$(findmnt -rn -o SOURCE --mountpoint "$ROOT" 2>/dev/null | tail -n 1)
if [ -n "$current" ]; then
  if [ "$(blkid -c /dev/null -o value -s LABEL "$current" 2>/dev/null)" = "$LABEL" ]; then
    say "warm boot: $ROOT is already the warm volume ($current); nothing to do"
    exit 0
  fi
  cold "$ROOT is already a mount of $current"
fi
# containerd's state dir is on a tmpfs: what containerd makes there (its socket, its io.containerd.* dirs) means it has
# started this boot, and a containerd already using its root (user data run late, or by hand) must not have it swapped
# underneath. Only containerd's own entries count: other units may create the directory itself early.
started=$(find "$STATE" -mindepth 1 -maxdepth 1 \( -name 'containerd.sock*' -o -name 'io.containerd.*' \) \
  -print -quit 2>/dev/null)
[ -z "$started" ] || cold "containerd has already started ($started exists)"

# The volume, by its label. udev may still be naming devices this early; wait for it a little, where there is one.
if command -v udevadm >/dev/null 2>&1; then
  timeout 30 udevadm settle --timeout=20 >/dev/null 2>&1
fi
mapfile -t devices < <(timeout 30 blkid -c /dev/null -o device -t "LABEL=$LABEL" 2>/dev/null)
[ "${#devices[@]}" -gt 0 ] || cold "no volume labelled $LABEL"
[ "${#devices[@]}" -eq 1 ] || cold "${#devices[@]} volumes labelled $LABEL (${devices[*]}), expected one"
device=${devices[0]}
fstype=$(blkid -c /dev/null -o value -s TYPE "$device" 2>/dev/null)

# The stamp, read from a read-only mount outside containerd's root: a volume that does not match is never mounted there.
staging=$(mktemp -d /run/eks-image-prefetch-warm.XXXXXX 2>/dev/null || mktemp -d) ||
  cold "cannot make a staging directory"
timeout 120 mount -o ro,nodev,nosuid,noexec "$device" "$staging" >/dev/null 2>&1 || {
  rmdir "$staging"
  staging=""
  cold "cannot mount $device read-only to read its stamp"
}
stamp=$(head -c 4096 "$staging/$STAMP" 2>/dev/null)
if umount "$staging" >/dev/null 2>&1; then
  rmdir "$staging"
  staging=""
else
  cold "cannot unmount $device from $staging"
fi
[ -n "$stamp" ] || cold "$device has no stamp ($STAMP): it was never sealed"
stamp_field() {
  local value=""
  [[ $stamp =~ \"$1\":\"([^\"]*)\" ]] && value=${BASH_REMATCH[1]}
  [[ $value =~ $VALUE_RE ]] && printf '%s' "$value"
}
sealed_containerd=$(stamp_field containerd)
sealed_ami=$(stamp_field ami)
if [ -z "$sealed_containerd" ] || [ -z "$sealed_ami" ]; then
  cold "the stamp on $device is unreadable"
fi

# This node, read the way the builder's steps read it: containerd's version (third field) and the AMI from IMDSv2.
node_containerd=$(timeout 30 "$CONTAINERD" --version 2>/dev/null | awk '{print $3}')
[ -n "$node_containerd" ] || cold "cannot read this node's containerd version"
[ "$sealed_containerd" = "$node_containerd" ] ||
  cold "the volume was sealed by containerd $sealed_containerd, this node runs $node_containerd"
token=$(curl -sf -m 5 --retry 3 --retry-delay 1 --retry-connrefused -X PUT \
  -H "X-aws-ec2-metadata-token-ttl-seconds: 60" "$IMDS/latest/api/token" 2>/dev/null)
[ -n "$token" ] || cold "no IMDSv2 token from $IMDS"
node_ami=$(curl -sf -m 5 --retry 3 --retry-delay 1 -H "X-aws-ec2-metadata-token: $token" \
  "$IMDS/latest/meta-data/ami-id" 2>/dev/null)
[[ $node_ami =~ $VALUE_RE ]] || cold "cannot read this node's AMI id from IMDS"
[ "$sealed_ami" = "$node_ami" ] || cold "the volume was sealed on $sealed_ami, this node is $node_ami"

# Warm: containerd's root on the volume. The builder copied the AMI's own root onto it first, so what the mount hides
# (the baked sandbox image) is on the volume too.
mkdir -p "$ROOT"
timeout 120 mount "$device" "$ROOT" >/dev/null 2>&1 || cold "cannot mount $device at $ROOT"
# The volume is as large as the launch template says, the filesystem as large as the builder's: grow it. A failure
# here leaves a smaller, working filesystem: still warm.
case "$fstype" in
  xfs) grow=(xfs_growfs -d "$ROOT") ;;
  ext4) grow=(resize2fs "$device") ;;
  *) grow=() ;;
esac
grown="not grown ($fstype)"
if [ "${#grow[@]}" -gt 0 ]; then
  if timeout 300 "${grow[@]}" >/dev/null 2>&1; then
    grown="grown to $(df -h --output=size "$ROOT" 2>/dev/null | tail -n 1 | tr -d ' ')"
  else
    grown="not grown: ${grow[0]} failed"
  fi
fi
sealed="sealed by containerd $sealed_containerd on $sealed_ami"
say "warm boot: $device ($LABEL) mounted at $ROOT, $sealed; filesystem $grown"
