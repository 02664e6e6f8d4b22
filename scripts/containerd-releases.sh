#!/usr/bin/env bash
# containerd releases for the node tests, besides the system's: 1.7 from Debian trixie and 2.x from sid (what EKS's
# AL2023 AMIs run). Downloaded with apt-get and unpacked with dpkg-deb -x under .build/containerd/<suite>/: nothing is
# installed system-wide, the system's apt state is not touched. Idempotent: a suite already unpacked is kept.
# Usage: scripts/containerd-releases.sh [suite...]   (default: trixie sid). Prints nothing when all are present.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${CONTAINERD_RELEASES_DIR:-$PWD/.build/containerd}
suites=("$@")
((${#suites[@]})) || suites=(trixie sid)
# One fetch at a time: parallel test workers (pytest-xdist) may each find a release missing.
mkdir -p "$build"
exec 9>"$build/.lock"
flock 9

for suite in "${suites[@]}"; do
  [[ "$suite" =~ ^[a-z]+$ ]] || { echo "containerd-releases: bad suite $suite" >&2; exit 2; }
  dest="$build/$suite"
  if [ -x "$dest/usr/bin/containerd" ] && [ -x "$dest/usr/bin/ctr" ]; then continue; fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "containerd-releases: no apt-get, cannot fetch containerd from $suite" >&2
    exit 0
  fi
  # apt's own state for this suite, beside the unpacked files (never /var/lib/apt, /etc/apt).
  state="$build/.apt/$suite"
  mkdir -p "$state/lists/partial" "$state/cache/archives/partial" "$state/etc"
  printf 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian %s main\n' \
    "$suite" >"$state/etc/sources.list"
  opts=(-o "Dir::Etc::sourcelist=$state/etc/sources.list" -o "Dir::Etc::sourceparts=-"
    -o "Dir::State::Lists=$state/lists" -o "Dir::Cache=$state/cache" -o "Dir::State::status=/dev/null"
    -o "APT::Get::List-Cleanup=0" -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root")
  echo "containerd-releases: fetching containerd from Debian $suite into $dest"
  apt-get "${opts[@]}" update -qq
  rm -rf "$state/deb" && mkdir -p "$state/deb"
  (cd "$state/deb" && apt-get "${opts[@]}" download -qq containerd)
  rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
  dpkg-deb -x "$state/deb"/containerd_*.deb "$dest.tmp"
  # Written last and moved into place, so a half-done fetch is never taken for a release.
  rm -rf "$dest" && mv "$dest.tmp" "$dest"
  "$dest/usr/bin/containerd" --version
done
