#!/usr/bin/env bash
# Debian packages the tests need: a real node (containerd), a real registry, image tools, shellcheck, and the block
# tools of the warm boot test (xfsprogs, loop devices).
# Installs what is missing when run as root; otherwise says what is missing, and the node tests then fail (unless
# SKIP_NODE_TESTS=1, which skips them with a notice). Then the containerd releases the node tests also run on (1.7 and
# 2.x, unpacked under .build/, not installed: scripts/containerd-releases.sh).
set -euo pipefail
releases() { bash "$(dirname "$0")/containerd-releases.sh"; }

declare -A package_of=(
  [containerd]=containerd
  [ctr]=containerd
  [docker-registry]=docker-registry
  [skopeo]=skopeo
  [umoci]=umoci
  [shellcheck]=shellcheck
  # The warm boot part's node test: a real XFS volume on a loop device (document/warm_boot.sh).
  [mkfs.xfs]=xfsprogs
  [xfs_growfs]=xfsprogs
  [losetup]=mount
  [blkid]=util-linux
  [curl]=curl
)
missing=()
for command in "${!package_of[@]}"; do
  command -v "$command" >/dev/null 2>&1 || missing+=("${package_of[$command]}")
done
if ((${#missing[@]} == 0)); then
  releases
  exit 0
fi
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
if [[ $(id -u) -ne 0 ]]; then
  echo "system-deps: missing ${missing[*]} (not root, not installing)" >&2
  releases
  exit 0
fi
echo "system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
releases
