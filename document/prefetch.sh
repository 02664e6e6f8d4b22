#!/bin/bash
# EKS Image Prefetch node script. Runs as root under the SSM agent, on bash >= 4.2 (Amazon Linux 2).
# Prints one JSON object per image, then a summary object; exits 0 only if no image failed.
#
# It pulls as kubelet's pull (the CRI's PullImage) would, as the node's own containerd config says: into the CRI's
# snapshotter, through the node's registry hosts (certs.d: mirrors, CAs, headers), leaving on disk what the CRI's
# discard_unpacked_layers would; and faster: up to `connections` connections per pull (kubelet's opens 3), with a big
# layer fetched as parallel byte ranges, verified by digest before containerd unpacks it.
set -euo pipefail
umask 077
export LC_ALL=C

# Parameters arrive as SSM_<name> (interpolationType ENV_VAR). An older agent instead pastes them into the text
# below; a quoted here-document keeps that text inert, and allowedPattern forbids the newline that could end it.
if [ -z "${SSM_images+x}" ]; then SSM_images=$(cat <<'SSM_PARAM_END'
{{ images }}
SSM_PARAM_END
); fi
if [ -z "${SSM_pin+x}" ]; then SSM_pin=$(cat <<'SSM_PARAM_END'
{{ pin }}
SSM_PARAM_END
); fi
if [ -z "${SSM_keepPinned+x}" ]; then SSM_keepPinned=$(cat <<'SSM_PARAM_END'
{{ keepPinned }}
SSM_PARAM_END
); fi
if [ -z "${SSM_maxDiskUsagePercent+x}" ]; then SSM_maxDiskUsagePercent=$(cat <<'SSM_PARAM_END'
{{ maxDiskUsagePercent }}
SSM_PARAM_END
); fi
if [ -z "${SSM_pullTimeoutSeconds+x}" ]; then SSM_pullTimeoutSeconds=$(cat <<'SSM_PARAM_END'
{{ pullTimeoutSeconds }}
SSM_PARAM_END
); fi
if [ -z "${SSM_pushedAt+x}" ]; then SSM_pushedAt=$(cat <<'SSM_PARAM_END'
{{ pushedAt }}
SSM_PARAM_END
); fi
if [ -z "${SSM_connections+x}" ]; then SSM_connections=$(cat <<'SSM_PARAM_END'
{{ connections }}
SSM_PARAM_END
); fi
# executionTimeout has no interpolationType: every agent pastes it here (it is the step's timeoutSeconds too).
execution_timeout=$(cat <<'SSM_PARAM_END'
{{ executionTimeout }}
SSM_PARAM_END
)

NS=k8s.io
# Values shared with the functions, from eks_prefetch/node_contract.py (make template writes them in).
PIN_LABEL='@PIN_LABEL@'
PIN_VALUE='@PIN_VALUE@'
OUR_LABEL='@OUR_PIN_LABEL@'
PUSHED_LABEL='@PUSHED_AT_LABEL@'
ref_re='@SCRIPT_REFERENCE_RE@'
digest_re='@DIGEST_RE@'
pin_re='[ ,]@PIN_LABEL_RE@=@PIN_VALUE_RE@([ ,]|$)'
ours_re='[ ,]@OUR_PIN_LABEL_RE@=([0-9]+)([ ,]|$)'
pushed_re='[ ,]@PUSHED_AT_LABEL_RE@=([0-9]+)([ ,]|$)'
max_connections='@MAX_CONNECTIONS@'
chunk_bytes='@RANGE_CHUNK_BYTES@'
# Labels of containerd's: its garbage collection keeps a blob labelled gc.root, and a manifest's blobs through its
# gc.ref.content labels (l.<n> for layer n).
GC_ROOT=containerd.io/gc.root
LAYER_REF=containerd.io/gc.ref.content.l
# Ours on a blob this script fetched itself and holds (gc.root) until its pull has it: a run killed in between leaves
# it, and the next run's fetch releases it.
FETCHED_LABEL=eks-image-prefetch/fetched
margin_divisor='@DEADLINE_MARGIN_DIVISOR@'
margin_min='@DEADLINE_MARGIN_MIN_SECONDS@'
margin_max='@DEADLINE_MARGIN_MAX_SECONDS@'
unset CONTAINERD_NAMESPACE
ecr_re='^[0-9]{12}\.dkr[.-]ecr(-fips)?\.([a-z0-9-]+)\.(amazonaws\.com|amazonaws\.com\.cn|on\.aws)$'

# GetCommandInvocation returns the first 24,000 characters of stdout (all of ours is ASCII). Records print only
# while they fit under OUT_LIMIT with SUMMARY_ROOM held back, so the summary is always last and whole.
# RECORD_ROOM bounds a record without its detail text, beyond its image name.
OUT_LIMIT=23500
SUMMARY_ROOM=600
RECORD_ROOM=200
out_chars=0
# Records go to fd 3, the real stdout; once $tmp exists, anything else written to stdout joins stderr.
exec 3>&1

# Functions give their results in variables their caller names (printf -v; bash 4.2 has no nameref), not in
# globals, and without the subshell of $(...). Their own locals start with _ so as not to hide the caller's.

# A JSON string into $1: anything but printable ASCII becomes "?", then \ and " are escaped, then it is cut to $3 chars.
json_str() { # var text max
  local _s=${2//[^[:print:]]/?}
  [ "${#_s}" -le "$3" ] || _s="${_s:0:$3}..."
  _s=${_s//\\/\\\\}
  printf -v "$1" '"%s"' "${_s//\"/\\\"}"
}

emit() { # one JSON object from its members
  printf '{%s}\n' "$1" >&3
  out_chars=$((out_chars + ${#1} + 3))
}
fits() { [ $((out_chars + $1 + SUMMARY_ROOM)) -le "$OUT_LIMIT" ]; } # a record of $1 more characters

# The image as a record names it, into $1: a valid reference whole (a reader matches records to what it sent),
# anything else cut to 400.
image_json() { # var ref
  if [[ "$2" =~ $ref_re ]]; then json_str "$1" "$2" 700; else json_str "$1" "$2" 400; fi
}

# Elapsed times come from /proc/uptime: monotonic, where date's wall clock steps back when chrony corrects it at boot
# (a negative time made records like "seconds":0.-498, not JSON). PREFETCH_UPTIME_FILE stands in for it in tests.
uptime_file=${PREFETCH_UPTIME_FILE:-/proc/uptime}
clock() { # var: now, in centiseconds (of uptime; of the wall clock where /proc/uptime cannot be read)
  local _up _rest
  if { read -r _up _rest <"$uptime_file"; } 2>/dev/null && [[ "$_up" =~ ^[0-9]+\.[0-9][0-9]$ ]]; then
    printf -v "$1" %d "$((10#${_up/./}))"
  else
    _up=$(date +%s%N)
    printf -v "$1" %d "$((_up / 10000000))"
  fi
}
elapsed() { # var start: the seconds since start (clock) into var, as a decimal; never negative, always a JSON number
  local _now _cs
  clock _now
  _cs=$((_now - $2))
  [ "$_cs" -ge 0 ] || _cs=0
  printf -v "$1" '%d.%02d' $((_cs / 100)) $((_cs % 100))
}
started=0
clock started

fatal() { # a run-level failure: a summary with the reason, no image touched
  local reason seconds
  json_str reason "$1" 300
  elapsed seconds "$started"
  emit "\"summary\":true,\"images\":0,\"failed\":0,\"omitted\":0,\"error\":$reason,\"seconds\":$seconds"
  exit 2
}

[[ "$SSM_pin" =~ ^(true|false)$ ]] || fatal "invalid parameter pin"
[[ "$SSM_keepPinned" =~ ^[1-9][0-9]?$ ]] || fatal "invalid parameter keepPinned"
[[ "$SSM_maxDiskUsagePercent" =~ ^[1-9][0-9]$ ]] || fatal "invalid parameter maxDiskUsagePercent"
[[ "$SSM_pullTimeoutSeconds" =~ ^[1-9][0-9]{1,5}$ ]] || fatal "invalid parameter pullTimeoutSeconds"
[[ "$SSM_pushedAt" =~ ^([0-9]{1,15})?(,([0-9]{1,15})?)*$ ]] || fatal "invalid parameter pushedAt"
[[ "$SSM_connections" =~ ^[1-9][0-9]?$ && "$SSM_connections" -le "$max_connections" ]] ||
  fatal "invalid parameter connections"
[[ "$execution_timeout" =~ ^[1-9][0-9]{1,5}$ ]] || execution_timeout=3600

# The CRI's settings, as the node's containerd itself reads them: `containerd config dump` merges the node's config
# file (/etc/containerd/config.toml on EKS, with its imports) over every default of this release. Kubelet's pulls go
# to the CRI's snapshotter, through its registry hosts (config_path: certs.d directories), and with
# discard_unpacked_layers they keep no layer blob once unpacked: this script pulls the same way. Config version 2
# (containerd 1.x) names the CRI plugin io.containerd.grpc.v1.cri, version 3 (2.x) io.containerd.cri.v1.images.
config_root='' config_address='' cri_snapshotter='' cri_discard='' cri_hosts_path=''
run_warning=''
read_config() {
  local dump line section='' key value
  local header_re='^[[:space:]]*\[([^]]*)\][[:space:]]*$'
  local pair_re='^[[:space:]]*([A-Za-z0-9_]+)[[:space:]]*=[[:space:]]*(.*[^[:space:]])[[:space:]]*$'
  if ! dump=$(timeout -k 5 30 containerd config dump 2>&1); then
    run_warning="containerd config dump failed ($(printf %s "$dump" | tail -n 1)): the CRI's defaults assumed"
    return 0
  fi
  while IFS= read -r line; do
    if [[ "$line" =~ $header_re ]]; then
      section=${BASH_REMATCH[1]//\'/\"}
      continue
    fi
    [[ "$line" =~ $pair_re ]] || continue
    key=${BASH_REMATCH[1]} value=${BASH_REMATCH[2]}
    case $value in \"*\" | \'*\') value=${value:1:${#value}-2} ;; esac
    case "$section/$key" in
    /root) config_root=$value ;;
    grpc/address) config_address=$value ;;
    'plugins."io.containerd.grpc.v1.cri".containerd/snapshotter' | 'plugins."io.containerd.cri.v1.images"/snapshotter')
      cri_snapshotter=$value ;;
    'plugins."io.containerd.grpc.v1.cri".containerd/discard_unpacked_layers' | \
      'plugins."io.containerd.cri.v1.images"/discard_unpacked_layers')
      cri_discard=$value ;;
    'plugins."io.containerd.grpc.v1.cri".registry/config_path' | 'plugins."io.containerd.cri.v1.images".registry/config_path')
      cri_hosts_path=$value ;;
    esac
  done <<<"$dump"
}
if command -v containerd >/dev/null 2>&1; then read_config; fi
[[ "$cri_snapshotter" =~ ^[A-Za-z0-9_.-]{1,64}$ ]] || cri_snapshotter=overlayfs
[ "$cri_discard" = true ] || cri_discard=false
[ -n "$config_root" ] || config_root=/var/lib/containerd
# This script's byte-range parts go beside the ingests they stream into: the content store's filesystem (on a warm
# volume builder, its root disk; never the data volume whose snapshot would store them).
fetch_scratch=$config_root/io.containerd.content.v1.content

# ctr's own variable names the socket where set; else the node's config does.
socket=${CONTAINERD_ADDRESS:-${config_address:-/run/containerd/containerd.sock}}
socket=${socket#unix://}
export CONTAINERD_ADDRESS=$socket

# A node without containerd at all (Bottlerocket's control container, a runtime other than containerd) is one this
# application cannot serve: the summary says so with "unsupported" and the run exits 0, touching nothing; the status
# function leaves the node out of coverage and self-repair. Where containerd is installed, it may not answer yet (a
# new node's command can arrive before nodeadm has started it, or during a restart): it is awaited a while, then the
# run fails with CONTAINERD_NOT_UP, a failure that repair retries. PREFETCH_SOCKET_WAIT_SECONDS stands in for the wait
# in tests.
unsupported() { # a node this application cannot serve: a summary with the reason, no image touched, exit 0
  local reason seconds
  json_str reason "$1" 300
  elapsed seconds "$started"
  emit "\"summary\":true,\"images\":0,\"failed\":0,\"omitted\":0,\"unsupported\":$reason,\"seconds\":$seconds"
  exit 0
}
# ctr's answer (its client's version first) is kept: ctr_release reads the release from it.
ctr_version_text=''
answers() { [ -S "$socket" ] && ctr_version_text=$(timeout -k 2 10 ctr version 2>/dev/null); }
if ! command -v containerd >/dev/null 2>&1; then
  [ -S "$socket" ] || unsupported "@NO_CONTAINERD_SOCKET@ at $socket"
fi
command -v ctr >/dev/null 2>&1 || fatal "ctr not found on PATH"
if ! answers; then
  socket_wait=${PREFETCH_SOCKET_WAIT_SECONDS:-@CONTAINERD_SOCKET_WAIT_SECONDS@}
  [[ "$socket_wait" =~ ^[0-9]{1,4}$ ]] || socket_wait=@CONTAINERD_SOCKET_WAIT_SECONDS@
  [ "$socket_wait" -le $((execution_timeout / 2)) ] || socket_wait=$((execution_timeout / 2))
  socket_deadline=$((SECONDS + socket_wait))
  while ! answers && [ "$SECONDS" -lt "$socket_deadline" ]; do sleep 1; done
  if ! answers; then
    if [ -S "$socket" ]; then
      fatal "@CONTAINERD_NOT_UP@: nothing answers at $socket after ${socket_wait}s"
    fi
    fatal "@CONTAINERD_NOT_UP@: no socket at $socket after ${socket_wait}s"
  fi
fi

# The whole run ends before the agent's executionTimeout kills it, leaving time to report.
margin=$((execution_timeout / margin_divisor))
[ "$margin" -ge "$margin_min" ] || margin=$margin_min
[ "$margin" -le "$margin_max" ] || margin=$margin_max
deadline=$((SECONDS + execution_timeout - margin))
remaining() { printf -v "$1" %d $((deadline - SECONDS)); } # var: the seconds left until the deadline

# Private scratch space (tmpfs /run when possible); it may hold an ECR token, so it goes on exit.
tmp=$(mktemp -d /run/eks-image-prefetch.XXXXXX 2>/dev/null || mktemp -d)
# SSM keeps 8,000 characters of stderr: it is collected here, with any stray stdout, and its start passed on at exit.
exec 4>&2 >>"$tmp/stderr" 2>&1
finish() {
  local size
  size=$(stat -c %s "$tmp/stderr" 2>/dev/null) || size=0
  head -c 7000 "$tmp/stderr" >&4 2>/dev/null || true
  [ "$size" -le 7000 ] || printf '\n(%d more bytes of stderr not shown)\n' $((size - 7000)) >&4 || true
  rm -rf "$tmp"
}
trap finish EXIT
trap 'exit 143' TERM INT

# At-least-once delivery can start two runs on one node; they take turns.
if command -v flock >/dev/null 2>&1; then
  if ! { exec 9>"${PREFETCH_LOCK_FILE:-@LOCK_FILE@}"; } 2>/dev/null; then exec 9>"$tmp/lock"; fi
  lock_wait=0
  remaining lock_wait
  flock -w "$lock_wait" 9 || fatal "another prefetch run held the lock until the deadline"
  lock_held=1
fi

# ctr calls that only talk to the local containerd: bounded all the same.
ctr_local() { timeout -k 5 60 ctr -n "$NS" "$@"; }

# containerd's root filesystem, for the disk guard: the nearest existing directory of its root.
disk_path=$config_root
while [ ! -d "$disk_path" ] && [ "$disk_path" != / ]; do disk_path=$(dirname "$disk_path"); done

# The usage of containerd's filesystem (kubelet's way: 100 - available/capacity) after $2 more KiB, into $1; fails
# above maxDiskUsagePercent. When df cannot tell, $1 is left as it is and the guard lets the pull go.
disk_ok() { # var kib
  local _line _fs _total _used _avail _rest _pct
  _line=$(df -P -k "$disk_path" 2>/dev/null | tail -n 1) || return 0
  read -r _fs _total _used _avail _rest <<<"$_line"
  [[ "$_total" =~ ^[0-9]+$ && "$_avail" =~ ^[0-9]+$ && "$_total" -gt 0 ]] || return 0
  _pct=$((((_total - _avail + $2) * 100 + _total - 1) / _total))
  printf -v "$1" %d "$_pct"
  [ "$_pct" -le "$SSM_maxDiskUsagePercent" ]
}

# One `ctr images ls` per run answers the look-ups of every name this run has not changed since (a name it pulls,
# tags or labels is asked of containerd again, changed_image): a cached image costs no ctr call to find.
declare -A listed=() changed=()
listing=pending
list_images() {
  [ "$listing" = pending ] || return 0
  local _out _name _rest
  listing=failed
  _out=$(ctr_local images ls 2>/dev/null) || return 0
  listing=complete
  while read -r _name _rest; do
    [ -z "$_name" ] || listed[$_name]=$_rest
  done < <(tail -n +2 <<<"$_out")
}
changed_image() { changed[$1]=1; }

# The local image of exactly this name (no network): its digest into $2 and who pinned it (none|ours|theirs) into
# $3; its labels (ctr's text) into image_labels. Fails when containerd has none.
image_labels=''
local_image() { # ref digest_var pinned_var
  local _line _name _type _digest _rest _pinned=none
  list_images
  if [ "$listing" = complete ] && [ -z "${changed[$1]+x}" ]; then
    [ -n "${listed[$1]+x}" ] || return 1
    _line="$1 ${listed[$1]}"
  else
    _line=$(ctr_local images ls "name==$1" 2>/dev/null | tail -n +2 | head -n 1) || return 1
  fi
  [ -n "$_line" ] || return 1
  read -r _name _type _digest _rest <<<"$_line"
  [ "$_name" = "$1" ] && [[ "$_digest" =~ $digest_re ]] || return 1
  if [[ " $_rest" =~ $pin_re ]]; then
    _pinned=theirs
    if [[ " $_rest" =~ $ours_re ]]; then _pinned=ours; fi
  fi
  image_labels=$_rest
  printf -v "$2" %s "$_digest"
  printf -v "$3" %s "$_pinned"
}

last_line() { # var file [pattern]: the file's last line (of those matching pattern), cut to 160; "" when none
  local _line=''
  if [ -r "$2" ]; then _line=$(grep -a -- "${3:-}" "$2" 2>/dev/null | tail -n 1) || _line=''; fi
  printf -v "$1" %s "${_line:0:160}"
}

ctr_error() { # the reason of a failed ctr call, from its stderr file $1 and exit code $2
  local line
  if [ "$2" -eq 124 ] || [ "$2" -eq 137 ]; then
    printf 'timed out after %ss' "$3"
    return
  fi
  line=$(grep -a '^ctr: ' "$1" | tail -n 1) || true
  [ -n "$line" ] || line=$(tail -n 1 "$1")
  printf '%s' "${line#ctr: }"
}

# --- The node's registry hosts ---------------------------------------------------------------------------------------
# ctr reads registry hosts from one directory (--hosts-dir): $hosts_dir holds, per registry host, a private copy of
# the directory the CRI would use for it (its hosts.toml's mirrors, CAs and headers, its certificate files), and for
# ECR the login's Authorization header, added for ECR itself only: a mirror never gets the token.
hosts_dir="$tmp/hosts"
mkdir -p "$hosts_dir"
declare -A login_error=() hosts_done=()

# The node's hosts directory for a registry host, as containerd looks it up: in each directory of the CRI's
# config_path in turn, host_port_ or host:port, then _default. "" when there is none.
node_hosts_dir() { # host var
  local _roots=() _root _name _names=("$1")
  printf -v "$2" %s ''
  [ -n "$cri_hosts_path" ] || return 0
  IFS=: read -r -a _roots <<<"$cri_hosts_path"
  [[ "$1" != *:* ]] || _names=("${1%:*}_${1##*:}_" "$1")
  _names+=(_default)
  for _root in "${_roots[@]}"; do
    for _name in "${_names[@]}"; do
      if [ -n "$_root" ] && [ -d "$_root/$_name" ]; then
        printf -v "$2" %s "$_root/$_name"
        return 0
      fi
    done
  done
}

# ECR: one login per registry and run, with the node's instance role: the Basic credential into $3. It goes into a
# hosts.toml under $tmp (0700), read by ctr --hosts-dir and by curl's config file: never in argv, never printed. (ctr
# --user takes the password only in argv.) Go and curl drop it on the redirect of layer downloads to S3.
ecr_credential() { # host region var -> 0, or 1 with login_error[host]
  local _token _t
  remaining _t
  [ "$_t" -le 60 ] || _t=60
  if ! command -v aws >/dev/null 2>&1; then
    login_error[$1]="ECR login failed: aws CLI not found"
    return 1
  fi
  if ! _token=$(timeout -k 5 "$_t" aws ecr get-login-password --region "$2" 2>"$tmp/aws.err") || [ -z "$_token" ]; then
    login_error[$1]="ECR login failed: $(tail -n 3 "$tmp/aws.err" 2>/dev/null | paste -sd " " -)"
    return 1
  fi
  printf -v "$3" %s "$(printf 'AWS:%s' "$_token" | base64 -w0)"
}

registry_hosts() { # host -> 0 when $hosts_dir is ready for it, or 1 with login_error[host]
  local host=$1 src dir="$hosts_dir/$1" credential file line header_re table_re added=false region
  [ -z "${hosts_done[$host]:-}" ] || return 0
  [ -z "${login_error[$host]:-}" ] || return 1
  node_hosts_dir "$host" src
  mkdir -p "$dir"
  [ -z "$src" ] || cp -RL "$src/." "$dir/" 2>/dev/null || true
  if [[ "$host" =~ $ecr_re ]]; then
    region=${BASH_REMATCH[2]}
    ecr_credential "$host" "$region" credential || return 1
    file="$dir/hosts.toml"
    if [ ! -f "$file" ]; then
      printf 'server = "https://%s"\n' "$host" >"$file"
    else
      # The node's file may have a table of ECR's own: the header goes into it, not into a second one (TOML).
      header_re="^[[:space:]]*\[host\.[\"']https://${host//./\\.}/?[\"']\.header\][[:space:]]*$"
      table_re="^[[:space:]]*\[host\.[\"']https://${host//./\\.}/?[\"']\][[:space:]]*$"
      if grep -Eq "$header_re" "$file"; then
        while IFS= read -r line || [ -n "$line" ]; do
          printf '%s\n' "$line"
          if [[ "$line" =~ $header_re ]]; then printf '    Authorization = ["Basic %s"]\n' "$credential"; fi
        done <"$file" >"$file.new"
        mv "$file.new" "$file"
        added=true
      elif grep -Eq "$table_re" "$file"; then
        printf '\n[host."https://%s".header]\n  Authorization = ["Basic %s"]\n' "$host" "$credential" >>"$file"
        added=true
      fi
      printf '\n' >>"$file"
    fi
    if [ "$added" = false ]; then
      printf '[host."https://%s"]\n  capabilities = ["pull", "resolve"]\n  [host."https://%s".header]\n    Authorization = ["Basic %s"]\n' \
        "$host" "$host" "$credential" >>"$file"
    fi
  fi
  hosts_done[$host]=1
}

# --- Layers fetched on bounded connections, big ones as parallel byte ranges ---------------------------------------
# containerd fetches a layer on one connection, and kubelet's pull fetches 3 layers at a time: one big layer then
# downloads at one connection's rate. And `ctr images pull --local` on containerd 2.x fetches every layer at once,
# whatever --max-concurrent-downloads says (its Fetch sets no limiter). So where an image has more layers than
# `connections` allows, or a layer of at least range_min_bytes, this script fetches its missing layers itself: on at
# most `connections` connections at once (curl --parallel), each layer of more than chunk_bytes as byte ranges of
# chunk_bytes, into containerd's content store (`ctr content ingest`, which checks each layer's size and digest),
# from the host containerd would fetch them from (the node's first mirror, else the registry). containerd then only
# unpacks. Where it cannot (no curl with --parallel, a hosts.toml it cannot read, a registry that does not serve
# ranges), containerd fetches, and the record says so.

# The host containerd would fetch blobs of a registry host from, by the hosts.toml in $hosts_dir: its first
# pull-capable host table, else its server. Its URL prefix (up to /v2) into $2 and curl's options for it into the
# file $3. Fails with the reason in $2 when the file has what this reading does not follow (client certificates, an
# array over several lines...).
blob_source() { # host var options-file
  local host=$1 dir="$hosts_dir/$1" line key value url scheme authority path cur=0 sub='' n i chosen=-1
  local -a urls=('') caps=('') skips=('') cas=('') overrides=('') headers=('')
  local quoted_re='"([^"]*)"' table_re='^\[host\.("([^"]+)"|'\''([^'\'']+)'\'')\]$'
  local sub_re='^\[host\.("([^"]+)"|'\''([^'\'']+)'\'')\.header\]$'
  local pair_re='^("[^"]+"|[A-Za-z0-9_.-]+)[[:space:]]*=[[:space:]]*(.*)$'
  if [ -f "$dir/hosts.toml" ]; then
    while IFS= read -r line || [ -n "$line" ]; do
      line=${line#"${line%%[![:space:]]*}"}
      line=${line%"${line##*[![:space:]]}"}
      if [ -z "$line" ] || [[ "$line" == \#* ]]; then continue; fi
      if [[ "$line" =~ $table_re ]]; then
        cur=${#urls[@]} sub=''
        urls[cur]=${BASH_REMATCH[2]}${BASH_REMATCH[3]} caps[cur]='' skips[cur]='' cas[cur]='' overrides[cur]='' headers[cur]=''
        continue
      elif [[ "$line" =~ $sub_re ]]; then
        sub=header
        for ((i = 1; i < ${#urls[@]}; i++)); do
          [ "${urls[i]}" != "${BASH_REMATCH[2]}${BASH_REMATCH[3]}" ] || cur=$i
        done
        continue
      elif [ "$line" = "[header]" ]; then
        cur=0 sub=header
        continue
      elif [[ "$line" == \[* ]]; then
        printf -v "$2" 'its hosts.toml has a table %s' "${line:0:80}"
        return 1
      fi
      if ! [[ "$line" =~ $pair_re ]]; then
        printf -v "$2" 'its hosts.toml has a line this script does not read: %s' "${line:0:80}"
        return 1
      fi
      key=${BASH_REMATCH[1]//\"/} value=${BASH_REMATCH[2]}
      if [ "$sub" = header ]; then
        while [[ "$value" =~ $quoted_re ]]; do
          headers[cur]+="$key: ${BASH_REMATCH[1]}"$'\n'
          value=${value#*"${BASH_REMATCH[0]}"}
        done
        continue
      fi
      case $key in
      server) [[ "$value" =~ $quoted_re ]] && urls[0]=${BASH_REMATCH[1]} ;;
      capabilities) caps[cur]=$value ;;
      skip_verify) skips[cur]=$value ;;
      override_path) overrides[cur]=$value ;;
      ca)
        while [[ "$value" =~ $quoted_re ]]; do
          case ${BASH_REMATCH[1]} in /*) cas[cur]+="${BASH_REMATCH[1]}"$'\n' ;; *) cas[cur]+="$dir/${BASH_REMATCH[1]}"$'\n' ;; esac
          value=${value#*"${BASH_REMATCH[0]}"}
        done
        ;;
      *)
        printf -v "$2" 'its hosts.toml sets %s' "$key"
        return 1
        ;;
      esac
    done <"$dir/hosts.toml"
  elif compgen -G "$dir/*.cert" >/dev/null || compgen -G "$dir/*.key" >/dev/null; then
    printf -v "$2" 'its certificate directory has client certificates'
    return 1
  elif compgen -G "$dir/*.crt" >/dev/null; then
    for value in "$dir"/*.crt; do cas[0]+="$value"$'\n'; done
  fi
  # Host tables in the file's order, then the server: the first that may pull.
  n=${#urls[@]}
  for ((i = 1; i <= n; i++)); do
    cur=$((i % n))
    if [ -z "${caps[cur]}" ] || [[ "${caps[cur]}" == *'"pull"'* ]]; then
      chosen=$cur
      break
    fi
  done
  if [ "$chosen" -lt 0 ]; then
    printf -v "$2" 'its hosts.toml has no host that may pull'
    return 1
  fi
  url=${urls[chosen]}
  if [ -z "$url" ]; then
    case ${host%:*} in localhost | 127.*) url="http://$host" ;; *) url="https://$host" ;; esac
  fi
  [[ "$url" == http://* || "$url" == https://* ]] || url="https://$url"
  [[ "$url" =~ ^(https?)://([^/]+)(/.*)?$ ]] || {
    printf -v "$2" 'its hosts.toml has a host URL this script does not read'
    return 1
  }
  scheme=${BASH_REMATCH[1]} authority=${BASH_REMATCH[2]} path=${BASH_REMATCH[3]}
  while [[ "$path" == */ ]]; do path=${path%/}; done
  if [ "${overrides[chosen]}" != true ] && [[ "$path" != */v2 ]]; then path+=/v2; fi
  printf -v "$2" '%s://%s%s' "$scheme" "$authority" "$path"
  [ "$authority" = "$host" ] || blob_query="?ns=$host"
  {
    [ "${skips[chosen]}" != true ] || printf 'insecure\n'
    if [ -n "${cas[chosen]}" ]; then
      printf '%s' "${cas[chosen]}" | while IFS= read -r value; do cat "$value"; done >"$3.ca" 2>/dev/null
      printf 'cacert = "%s"\n' "$3.ca"
    fi
    printf '%s' "${headers[chosen]}" | while IFS= read -r value; do
      [ -z "$value" ] || printf 'header = "%s"\n' "${value//\"/\\\"}"
    done
  } >"$3"
}
blob_query=''

# This run's curl can fetch in parallel (--parallel: curl 7.66): "" if so, else why not.
curl_problem=unchecked
curl_check() {
  local version
  [ "$curl_problem" = unchecked ] || return 0
  if ! command -v curl >/dev/null 2>&1; then
    curl_problem='no curl on PATH'
  elif ! [[ "$(curl --version 2>/dev/null | head -n 1)" =~ ^curl\ ([0-9]+)\.([0-9]+) ]]; then
    curl_problem="curl's version is unknown"
  elif ((BASH_REMATCH[1] < 7 || (BASH_REMATCH[1] == 7 && BASH_REMATCH[2] < 66))); then
    version="${BASH_REMATCH[1]}.${BASH_REMATCH[2]}"
    curl_problem="curl $version has no --parallel (7.66)"
  else
    curl_problem=''
  fi
}

# The layers of a manifest (its JSON text, one line): digests and sizes into layer_digests and layer_sizes.
layer_digests=() layer_sizes=()
manifest_layers() { # manifest-json
  local rest entry entry_re='^[[:space:],]*(\{[^{}]*(\{[^{}]*\}[^{}]*)*\})'
  layer_digests=() layer_sizes=()
  [[ "$1" =~ \"layers\"[[:space:]]*:[[:space:]]*\[ ]] || return 0
  rest=${1#*"${BASH_REMATCH[0]}"}
  while [[ "$rest" =~ $entry_re ]]; do
    entry=${BASH_REMATCH[1]}
    rest=${rest#*"$entry"}
    if [[ "$entry" =~ \"digest\"[[:space:]]*:[[:space:]]*\"(sha256:[a-f0-9]{64})\" ]]; then
      layer_digests+=("${BASH_REMATCH[1]}")
      [[ "$entry" =~ \"size\"[[:space:]]*:[[:space:]]*([0-9]{1,15}) ]] && layer_sizes+=("${BASH_REMATCH[1]}") ||
        layer_sizes+=(0)
    fi
  done
}

# While this run fetches an image's layers, its platform manifest is in the content store ahead of ctr, labelled
# gc.root and referencing every layer (gc.ref.content.l.<n>, as ctr's pull labels it): each layer is held from the
# moment it is committed until the pull has the image (containerd collects unreferenced blobs at any time). The
# manifest carries FETCHED_LABEL meanwhile: a run killed in between leaves it, and the next run that finds this
# script's scratch directory under containerd's root releases it.
protected=''
protect_manifest() { # digest manifest-file -> 0 when the manifest holds the layers
  local -a labels=("$GC_ROOT=$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$FETCHED_LABEL=1")
  local i size
  size=$(stat -c %s "$2") || return 1
  timeout -k 5 60 ctr -n "$NS" content ingest --expected-size "$size" --expected-digest "$1" "manifest-$1" <"$2" \
    >/dev/null 2>>"$tmp/ingest.err" || return 1
  for i in "${!layer_digests[@]}"; do labels+=("$LAYER_REF.$i=${layer_digests[i]}"); done
  ctr_local content label "$1" "${labels[@]}" >/dev/null 2>>"$tmp/ingest.err" || return 1
  protected=$1
}
# The hold released, and with the CRI's discard_unpacked_layers, the layer references too: the manifest then holds
# what the CRI's pull leaves (the config; the unpacked snapshots hang off it), and its layer blobs are collected.
release_manifest() { # digest layer-count
  local -a labels=("$GC_ROOT=" "$FETCHED_LABEL=")
  local i
  if [ "$cri_discard" = true ]; then
    for ((i = 0; i < $2; i++)); do labels+=("$LAYER_REF.$i="); done
  fi
  ctr_local content label "$1" "${labels[@]}" >/dev/null 2>&1 || true
  [ "$1" != "$protected" ] || protected=''
}
release_stale() { # manifests a killed run left held, found only where its scratch directory is left too
  local line digest count
  compgen -G "$fetch_scratch/.eks-image-prefetch-fetch.*" >/dev/null || return 0
  [ -n "${lock_held:-}" ] || return 0 # another run may be fetching
  while IFS= read -r line; do
    [[ "$line" == *"$FETCHED_LABEL="* ]] || continue
    digest=${line%% *} count=0
    while [[ "$line" =~ $LAYER_REF\.([0-9]+)= ]]; do
      [ "${BASH_REMATCH[1]}" -lt "$count" ] || count=$((BASH_REMATCH[1] + 1))
      line=${line#*"${BASH_REMATCH[0]}"}
    done
    release_manifest "$digest" "$count"
  done < <(ctr_local content ls 2>/dev/null | tail -n +2)
  rm -rf "$fetch_scratch"/.eks-image-prefetch-fetch.* 2>/dev/null || true
}

# How many of the image's first layers are unpacked already (their chain's snapshot exists in the CRI's snapshotter:
# a base shared with an image the node holds) into $1. containerd's transfer service, as the CRI's pull, does not
# fetch those (with discard_unpacked_layers their blobs are gone, and ctr's own fetch would download them again).
chain_prefix() { # var base registry-args...
  local _snaps _config _json _chain='' _k=0 _d _err
  local -a _diffs=()
  printf -v "$1" %d 0
  _snaps=$(ctr_local snapshots --snapshotter "$cri_snapshotter" ls 2>/dev/null) || return 0
  [[ "$_snaps" == *Committed* ]] || return 0
  [[ "$est_manifest" =~ \"config\"[[:space:]]*:[[:space:]]*\{[^}]*\"digest\"[[:space:]]*:[[:space:]]*\"(sha256:[a-f0-9]{64})\" ]] ||
    return 0
  _config=${BASH_REMATCH[1]}
  fetch_manifest "$2@$_config" "$tmp/config.json" 60 _err "${@:3}" || return 0
  _json=$(tr -d '\n\r' <"$tmp/config.json")
  [[ "$_json" =~ \"diff_ids\"[[:space:]]*:[[:space:]]*\[([^]]*)\] ]] || return 0
  _json=${BASH_REMATCH[1]}
  while [[ "$_json" =~ (sha256:[a-f0-9]{64}) ]]; do
    _diffs+=("${BASH_REMATCH[1]}")
    _json=${_json#*"${BASH_REMATCH[1]}"}
  done
  [ "${#_diffs[@]}" -eq "${#layer_digests[@]}" ] || return 0
  # A chain id: the first layer's diff id, then sha256 of "<parent chain id> <diff id>".
  for _d in "${_diffs[@]}"; do
    if [ -z "$_chain" ]; then _chain=$_d; else _chain="sha256:$(printf '%s %s' "$_chain" "$_d" | sha256sum | cut -c1-64)"; fi
    [[ "$_snaps" == *"$_chain"* ]] || break
    _k=$((_k + 1))
  done
  printf -v "$1" %d "$_k"
}

# The plan for an image's layers (layer_digests/layer_sizes) from host: which missing layers this script fetches
# itself (fetch_wanted), and whether containerd then fetches the rest in ctr's process (ctr_local_pull) or in 2.x's
# transfer service. containerd fetches a layer on one connection: ctr's own process `connections` layers at once
# (1.x; 2.x sets no limit there, so it gets at most connections - 1 layers and the config), the transfer service 3,
# skipping the layers unpacked already. This script fetches layers `connections` at once and those of more than
# chunk_bytes as byte ranges, but each byte goes through `ctr content ingest` (a gRPC stream into containerd), which
# costs about 4 times the CPU of containerd's own fetch (measured on the test machine: a 500 MB image of 5 layers
# took 6 times as long on an unthrottled link): only a plan 3 times as fast on the network is worth it. Of these,
# the plan of the least time, in bytes per connection's rate:
#   containerd alone: its largest layer, or its bytes per layer at once if more;
#   this script for all: its bytes per connection, or its largest range if more, times 3 (so, in practice, an image
#   whose largest layer is most of it);
#   2.x, none unpacked already: this script for the smallest layers, so that ctr's process fetches the rest within
#   `connections`.
# fetch_note says why this script's fetch is not used where the plan wants it.
fetch_note='' fetch_source='' fetch_wanted=() ctr_local_pull=true plan_missing=0
plan_fetch() { # host base registry-args...
  local present i size source missing=() total=0 largest=0 best ours rest rest_total rest_largest n at_once active
  local skip=0
  local -a by_size=()
  fetch_note='' fetch_source='' fetch_wanted=() ctr_local_pull=true plan_missing=0
  [ "${#layer_digests[@]}" -gt 0 ] || { [ "$transfer_possible" = false ] || ctr_local_pull=false; return 0; }
  [ "$transfer_possible" = false ] || chain_prefix skip "$2" "${@:3}"
  present=" $(ctr_local content ls -q 2>/dev/null | tr '\n' ' ')"
  for i in "${!layer_digests[@]}"; do
    [ "$i" -ge "$skip" ] || continue
    [[ "$present" == *" ${layer_digests[i]} "* ]] || [ "${layer_sizes[i]}" -eq 0 ] || missing+=("$i")
  done
  n=${#missing[@]} plan_missing=${#missing[@]}
  # Up to 3 layers to fetch, the transfer service opens as many connections as ctr's process would, and writes them
  # in the daemon rather than streaming them through ctr (measured: a few-kB image 0.05 s against 0.13 s).
  [ "$skip" -eq 0 ] && { [ "$transfer_possible" = false ] || [ "$n" -gt 3 ]; } || ctr_local_pull=false
  [ "$n" -gt 0 ] || return 0
  for i in "${missing[@]}"; do
    size=${layer_sizes[i]}
    total=$((total + size))
    [ "$size" -le "$largest" ] || largest=$size
  done
  # containerd alone: in ctr's process where it is bounded (1.x, or 2.x with room), else in 2.x's transfer service.
  at_once=$SSM_connections
  if [ "$ctr_major" -ge 2 ] && { [ "$skip" -gt 0 ] || [ $((n + 1)) -gt "$SSM_connections" ]; }; then
    if [ "$transfer_possible" = true ]; then
      ctr_local_pull=false at_once=3
    else
      best=-1 # not bounded: this script fetches (below), or says so
    fi
  fi
  [ "$at_once" -le "$n" ] || at_once=$n
  if [ "${best:-0}" -ge 0 ]; then
    best=$((total / at_once))
    [ "$best" -ge "$largest" ] || best=$largest
  fi
  # This script for all of them.
  ours=$((total / SSM_connections))
  size=$largest
  [ "$size" -le "$chunk_bytes" ] || size=$chunk_bytes
  [ "$ours" -ge "$size" ] || ours=$size
  ours=$((ours * 3))
  local plan=containerd
  if [ "$best" -lt 0 ] || [ "$ours" -lt "$best" ]; then plan=all best=$ours; fi
  # 2.x: this script for the smallest, ctr's process for the rest (at most connections - 1 of them).
  if [ "$ctr_major" -ge 2 ] && [ "$skip" -eq 0 ] && [ $((n + 1)) -gt "$SSM_connections" ] &&
    [ "$SSM_connections" -ge 2 ]; then
    mapfile -t by_size < <(for i in "${missing[@]}"; do echo "${layer_sizes[i]} $i"; done | sort -n -k1,1)
    rest_total=0 rest_largest=0
    for ((i = n - SSM_connections + 1; i < n; i++)); do
      size=${by_size[i]%% *}
      rest_total=$((rest_total + size))
      [ "$size" -le "$rest_largest" ] || rest_largest=$size
    done
    rest=$((rest_total / (SSM_connections - 1)))
    [ "$rest" -ge "$rest_largest" ] || rest=$rest_largest
    size=$(((total - rest_total) * 3 / SSM_connections))
    if [ $((size + rest)) -lt "$best" ]; then
      plan=smallest
      ctr_local_pull=true
    fi
  fi
  case $plan in
  containerd) return 0 ;;
  all)
    fetch_wanted=("${missing[@]}")
    # Only unpacking is left: the transfer service where it can (the layers unpacked already stay unfetched).
    [ "$transfer_possible" = true ] && ctr_local_pull=false || ctr_local_pull=true
    ;;
  smallest) for ((i = 0; i <= n - SSM_connections; i++)); do fetch_wanted+=("${by_size[i]##* }"); done ;;
  esac
  # A layer containerd is already writing (a pull in progress, or the part a failed one left, which its next fetch
  # resumes by a byte range) is left to containerd: this script's stream cannot resume it.
  active=$(ctr_local content active 2>/dev/null) || active=''
  if [[ "$active" == *layer-sha256:* ]]; then
    local -a kept=()
    for i in "${fetch_wanted[@]}"; do [[ "$active" == *"layer-${layer_digests[i]}"* ]] || kept+=("$i"); done
    fetch_wanted=(${kept[@]+"${kept[@]}"})
    [ "${#fetch_wanted[@]}" -gt 0 ] || return 0
  fi
  curl_check
  if [ -n "$curl_problem" ]; then
    fetch_note="layers not fetched in parallel: $curl_problem"
  elif [ ! -d "$config_root" ]; then
    fetch_note="layers not fetched in parallel: no directory $config_root"
  else
    blob_query=''
    if blob_source "$1" source "$tmp/curl.host"; then
      fetch_source=$source
      return 0
    fi
    fetch_note="layers not fetched in parallel: $1's $source"
  fi
  fetch_wanted=()
  bound_containerd "$n"
}
# containerd fetches $1 layers: on 2.x, in the transfer service where ctr's process would open more connections
# than `connections`, or, where it cannot, said so.
bound_containerd() { # layers
  [ "$ctr_major" -ge 2 ] && [ "$ctr_local_pull" = true ] && [ $(($1 + 1)) -gt "$SSM_connections" ] || return 0
  if [ "$transfer_possible" = true ]; then
    ctr_local_pull=false
  else
    join fetch_note "ctr 2.x fetched $1 layers at once (it sets no limit)"
  fi
}

# Starts fetching fetch_wanted from repo (curl in the background, fetch_curl), each layer streamed into the content
# store as its ranges arrive (fetch_ingests: at most max(connections, 16) layers at once, their ingests holding the
# layers' ingest refs, which containerd's own fetch of the same layer then waits for). 1 if it cannot start.
fetch_parts='' fetch_curl='' fetch_ingests=()
start_fetch() { # repo platform-digest t
  local repo=$1 t=$3 i c n=0 start end size digest window=$SSM_connections why
  fetch_ingests=()
  if ! protect_manifest "$2" "$tmp/platform-manifest"; then
    last_line why "$tmp/ingest.err"
    fetch_note="layers not fetched in parallel: the manifest could not be held ($why)"
    return 1
  fi
  release_stale
  if ! fetch_parts=$(mktemp -d "$fetch_scratch/.eks-image-prefetch-fetch.XXXXXX" 2>/dev/null); then
    fetch_note="layers not fetched in parallel: no scratch directory under $fetch_scratch"
    return 1
  fi
  {
    printf 'parallel\nparallel-max = %d\nsilent\nshow-error\n' "$SSM_connections"
    for i in "${fetch_wanted[@]}"; do
      size=${layer_sizes[i]} digest=${layer_digests[i]}
      for ((c = 0, start = 0; start < size; c++, start += chunk_bytes)); do
        end=$((start + chunk_bytes - 1))
        [ "$end" -lt "$size" ] || end=$((size - 1))
        # `next` between transfers: each has its own options (curl ends with an error at an empty last one).
        [ "$((n++))" -eq 0 ] || printf 'next\n'
        printf 'url = "%s/%s/blobs/%s%s"\noutput = "%s/%d.%d"\n' \
          "$fetch_source" "$repo" "$digest" "$blob_query" "$fetch_parts" "$i" "$c"
        # A layer of one chunk is asked for whole; a registry that answers a range with the whole blob ends the
        # transfer at once (max-filesize: its length is more than a chunk's).
        [ "$size" -le "$chunk_bytes" ] || printf 'range = "%d-%d"\nmax-filesize = %d\n' "$start" "$end" "$chunk_bytes"
        printf 'fail\nlocation\nmax-redirs = 3\nproto = "=http,https"\nproto-redir = "=http,https"\n'
        # No retry: a retried range rewrites its part from the start, under a stream already passed on.
        printf 'connect-timeout = 30\nspeed-limit = 1024\nspeed-time = 60\n'
        cat "$tmp/curl.host"
      done
    done
  } >"$tmp/curl.cfg"
  timeout -k 5 "$t" curl -K "$tmp/curl.cfg" >/dev/null 2>"$tmp/curl.err" &
  fetch_curl=$!
  [ "$window" -ge 16 ] || window=16
  for n in "${!fetch_wanted[@]}"; do
    [ "$n" -lt "$window" ] || wait "${fetch_ingests[n - window]}" 2>/dev/null || true
    ingest_layer "${fetch_wanted[n]}" "$t" &
    fetch_ingests+=($!)
  done
}

# Waits for the fetch; the layers it could not bring are containerd's to fetch (fetch_left), and fetch_note says why.
finish_fetch() { # host
  local n rc=0 i present why
  wait "$fetch_curl" 2>/dev/null || rc=$?
  for n in "${!fetch_ingests[@]}"; do wait "${fetch_ingests[n]}" 2>/dev/null || true; done
  rm -rf "$fetch_parts"
  present=" $(ctr_local content ls -q 2>/dev/null | tr '\n' ' ')"
  fetch_left=0
  for i in "${fetch_wanted[@]}"; do
    [[ "$present" == *" ${layer_digests[i]} "* ]] || fetch_left=$((fetch_left + 1))
  done
  [ "$fetch_left" -gt 0 ] || return 0
  if grep -q '(63)' "$tmp/curl.err" 2>/dev/null; then
    fetch_note="byte ranges failed: $1's registry answers them with whole blobs"
  else
    last_line why "$tmp/curl.err" 'curl: '
    [ -n "$why" ] || last_line why "$tmp/ingest.err"
    fetch_note="parallel fetch failed (${why:-no error said}; curl exit $rc)"
  fi
  fetch_note+="; containerd fetched $fetch_left of ${#fetch_wanted[@]} layers"
}
fetch_left=0

# One layer's ranges, in order, streamed as curl writes them (tail --pid ends with curl) into `ctr content ingest`,
# which checks its size and digest. A range curl gave up on ends the stream there, short: the ingest refuses it, and
# what it wrote is a true start of the layer, which containerd's own fetch resumes.
ingest_layer() { # index t
  local i=$1 t=$2 size=${layer_sizes[$1]} digest=${layer_digests[$1]} c start want have
  {
    for ((c = 0, start = 0; start < size; c++, start += chunk_bytes)); do
      want=$((size - start))
      [ "$want" -le "$chunk_bytes" ] || want=$chunk_bytes
      head -c "$want" < <(tail -c +1 -s 0.05 -F --pid="$fetch_curl" "$fetch_parts/$i.$c" 2>/dev/null)
      have=$(stat -c %s "$fetch_parts/$i.$c" 2>/dev/null) || have=0
      rm -f "$fetch_parts/$i.$c"
      [ "$have" -ge "$want" ] || exit 1
    done
  } | timeout -k 5 "$t" ctr -n "$NS" content ingest --expected-size "$size" --expected-digest "$digest" \
    "layer-$digest" >/dev/null 2>>"$tmp/ingest.err" || true
}

arch=$(uname -m)
case $arch in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; esac

# An image with no manifest for this node's OS/architecture is not for this node: skipped, not failed (the run exits
# 0), with a reason the status function reads as "not applicable" (node_contract.PLATFORM_SKIP_REASON): outside the
# repository's coverage on this node, and never repaired here.
platform_skip() { # ref t0
  report "$1" "$2" skipped '' '' '' reason "@PLATFORM_SKIP_REASON@: no manifest for linux/$arch"
}

# The digest of this node's platform (ctr's default) in an index's JSON text $1, into $2; fails if it has none.
platform_child() { # index-json var
  local _entry _rest=$1 _entry_re='\{[^{}]*(\{[^{}]*\}[^{}]*)*\}'
  while [[ "$_rest" =~ $_entry_re ]]; do
    _entry=${BASH_REMATCH[0]}
    _rest=${_rest#*"$_entry"}
    if [[ "$_entry" =~ \"architecture\"[[:space:]]*:[[:space:]]*\"$arch\" && "$_entry" =~ \"os\"[[:space:]]*:[[:space:]]*\"linux\" && "$_entry" =~ \"digest\"[[:space:]]*:[[:space:]]*\"(sha256:[a-f0-9]{64})\" ]]; then
      printf -v "$2" %s "${BASH_REMATCH[1]}"
      return 0
    fi
  done
  return 1
}

# A manifest from the registry into a file, with ctr's registry arguments. Fails with the reason in error_var.
fetch_manifest() { # ref file t error_var registry-args...
  local _ref=$1 _file=$2 _t=$3 _error_var=$4 _rc
  shift 4
  set +e
  timeout -k 5 "$_t" ctr -n "$NS" content fetch-object "$@" "$_ref" 2>"$tmp/fetch.err" | head -c 4194304 >"$_file"
  _rc=${PIPESTATUS[0]}
  set -e
  if [ "$_rc" -ne 0 ]; then
    printf -v "$_error_var" %s "$(ctr_error "$tmp/fetch.err" "$_rc" "$_t")"
    return 1
  fi
}
# The size estimate (compressed bytes of this node's platform manifest, or nothing) into bytes_var and the manifest
# digest into digest_var, from the registry before pulling; the platform manifest's text and digest into
# est_manifest and est_platform. Fails with the reason in error_var when the registry refuses the reference (the pull
# would).
est_manifest='' est_platform=''
estimate() { # ref base t bytes_var digest_var error_var registry-args...
  local _ref=$1 _base=$2 _t=$3 _bytes_var=$4 _digest_var=$5 _error_var=$6
  local _manifest _child _n _size_re
  shift 6
  fetch_manifest "$_ref" "$tmp/manifest" "$_t" "$_error_var" "$@" || return 1
  printf -v "$_digest_var" 'sha256:%s' "$(sha256sum "$tmp/manifest" | cut -c1-64)"
  est_platform=${!_digest_var}
  _manifest=$(tr -d '\n\r' <"$tmp/manifest")
  if [[ "$_manifest" =~ \"manifests\"[[:space:]]*: ]]; then
    # An index: the entry for this node's platform (ctr's default), then its manifest.
    # No entry for this node's platform: the image is not for this node (platform_skip).
    platform_child "$_manifest" _child || return 3
    fetch_manifest "$_base@$_child" "$tmp/manifest" "$_t" "$_error_var" "$@" || return 1
    _manifest=$(tr -d '\n\r' <"$tmp/manifest")
    est_platform=$_child
  fi
  est_manifest=$_manifest
  cp "$tmp/manifest" "$tmp/platform-manifest"
  _size_re='"size"[[:space:]]*:[[:space:]]*([0-9]{1,15})'
  _n=0
  while [[ "$_manifest" =~ $_size_re ]]; do
    _n=$((_n + BASH_REMATCH[1]))
    _manifest=${_manifest#*"${BASH_REMATCH[0]}"}
  done
  [ "$_n" -eq 0 ] || printf -v "$_bytes_var" %d "$_n"
}

# --- Order: push times, pins and tags ---------------------------------------------------------------------------
# Commands reach a node out of order. What orders two images of a repository is when the registry received their
# pushes: the functions send it (pushedAt, ms since the epoch), and each name pinned or tagged here carries it as
# PUSHED_LABEL. An image sent without one is dated by its build time ("created", with its UTC offset), else by when
# it was pinned. A tag only ever moves to a later image; retention keeps the newest keepPinned images pinned.

# The build time of a present image (its platform's config's "created", with its UTC offset) into $2, in ms since the
# epoch; "" when it cannot tell.
created_ms() { # ref var
  local digest by json created
  printf -v "$2" %s ''
  local_image "$1" digest by || return 0
  json=$(ctr_local content get "$digest" 2>/dev/null | head -c 4194304 | tr -d '\n\r') || return 0
  if [[ "$json" =~ \"manifests\"[[:space:]]*: ]]; then
    platform_child "$json" digest || return 0
    json=$(ctr_local content get "$digest" 2>/dev/null | head -c 4194304 | tr -d '\n\r') || return 0
  fi
  [[ "$json" =~ \"config\"[[:space:]]*:[[:space:]]*\{[^}]*\"digest\"[[:space:]]*:[[:space:]]*\"(sha256:[a-f0-9]{64})\" ]] || return 0
  json=$(ctr_local content get "${BASH_REMATCH[1]}" 2>/dev/null | head -c 4194304 | tr -d '\n\r') || return 0
  # The top-level "created" comes before history's in the configs builders write.
  [[ "$json" =~ \"created\"[[:space:]]*:[[:space:]]*\"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]{8,30}(Z|[+-][0-9]{2}:[0-9]{2}))\" ]] || return 0
  created=$(date -u -d "${BASH_REMATCH[1]}" +%s%3N 2>/dev/null) || return 0
  [[ "$created" =~ ^[0-9]{1,15}$ ]] || return 0
  printf -v "$2" %s "$created"
}
# The time of an image name (ms since the epoch) into $2: its PUSHED_LABEL, else its build time, else its pin time
# (from its labels $3, ctr's text, when given; else looked up). "" when none is known.
time_of() { # ref var [labels]
  local _labels=${3-}
  if [ -z "${3+x}" ]; then
    local _digest _by
    local_image "$1" _digest _by || {
      printf -v "$2" %s ''
      return 0
    }
    _labels=$image_labels
  fi
  if [[ " $_labels" =~ $pushed_re ]]; then
    printf -v "$2" %s "${BASH_REMATCH[1]}"
    return 0
  fi
  created_ms "$1" "$2"
  if [ -z "${!2}" ] && [[ " $_labels" =~ $ours_re ]]; then printf -v "$2" %s "$((BASH_REMATCH[1] / 1000000))"; fi
}

# This run's view of our pins (`ctr images ls` once, kept up to date as it pins): per name, its repository, digest,
# labels, and its time once asked for (pin_time_of: a build time costs three `ctr content get`, so only where two
# images must be ordered). Read the first time a pin is decided.
declare -A pin_repo=() pin_digest=() pin_labels=() pin_time=()
pins_read=false
read_pins() {
  local name digest rest host path
  [ "$pins_read" = false ] || return 0
  pins_read=true
  list_images
  while read -r name _ digest rest; do
    [[ " $rest" =~ $ours_re ]] || continue
    host=${name%%/*} path=${name#*/}
    path=${path%%@*} path=${path%%:*}
    pin_repo[$name]="$host/$path" pin_digest[$name]=$digest pin_labels[$name]=$rest
  done < <(if [ "$listing" = complete ]; then
    for name in "${!listed[@]}"; do [ -n "${changed[$name]+x}" ] || echo "$name ${listed[$name]}"; done
  else
    ctr_local images ls "labels.\"$OUR_LABEL\"" 2>/dev/null | tail -n +2
  fi)
}
pin_time_of() { # name var
  if [ -z "${pin_time[$1]+x}" ]; then
    local _pin_at # not the caller's name: printf -v would set this one
    time_of "$1" _pin_at "${pin_labels[$1]:-}"
    pin_time[$1]=$_pin_at
  fi
  printf -v "$2" %s "${pin_time[$1]}"
}
pinned_digests() { # repo var: how many distinct images of the repository we pin
  local name seen=' ' _n=0
  for name in "${!pin_repo[@]}"; do
    [ "${pin_repo[$name]}" = "$1" ] || continue
    [[ "$seen" != *" ${pin_digest[$name]} "* ]] || continue
    seen+="${pin_digest[$name]} " _n=$((_n + 1))
  done
  printf -v "$2" %d "$_n"
}

# How many other images of repository $2 we keep pinned that are newer than image $1 (digest $3, time $4 or, when
# "", its own), into $5. Times are looked up only where keepPinned others are pinned at all.
newer_pins() { # ref repo digest time var
  local name seen=' ' _n=0 _others=0 _mine=$4 _at
  read_pins
  pinned_digests "$2" _others
  if [ "$_others" -ge "$SSM_keepPinned" ]; then
    [ -n "$_mine" ] || time_of "$1" _mine
    for name in "${!pin_repo[@]}"; do
      [ "${pin_repo[$name]}" = "$2" ] || continue
      [ "${pin_digest[$name]}" != "$3" ] || continue
      [[ "$seen" != *" ${pin_digest[$name]} "* ]] || continue
      pin_time_of "$name" _at
      if [ -n "$_mine" ] && [ -n "$_at" ] && [ "$_at" -gt "$_mine" ]; then
        _n=$((_n + 1))
        seen+="${pin_digest[$name]} "
      fi
    done
  fi
  printf -v "$5" %d "$_n"
}

# Whether to pin image $1 (digest $2) of repository $3, of time $4 (may be ""), into $5 (true|false), and why not
# into $6. Not when keepPinned newer images of ours are pinned: retention would only unpin it again.
pin_decision() { # ref digest repo time var why_var
  local _newer=0
  printf -v "$6" %s ''
  if [ "$SSM_pin" != true ]; then
    printf -v "$5" %s false
    return 0
  fi
  newer_pins "$1" "$3" "$2" "$4" _newer
  if [ "$_newer" -ge "$SSM_keepPinned" ]; then
    printf -v "$5" %s false
    printf -v "$6" 'not pinned: %d newer versions are pinned (keepPinned %d)' "$_newer" "$SSM_keepPinned"
    return 0
  fi
  printf -v "$5" %s true
}

# Labels a name pinned by us (pinned-at now, and its push time when known), and notes it in this run's view.
declare -A pinned_repos=()
pin_name() { # ref repo digest time
  local now
  now=$(date +%s%N)
  changed_image "$1"
  ctr_local images label "$1" "$PIN_LABEL=$PIN_VALUE" "$OUR_LABEL=$now" ${4:+"$PUSHED_LABEL=$4"} \
    >/dev/null 2>"$tmp/label.err" || return 1
  note_pin "$1" "$2" "$3" "$4"
}
note_pin() { # ref repo digest time: a name this run pinned, in its view
  read_pins
  pin_repo[$1]=$2 pin_digest[$1]=$3 pin_labels[$1]=''
  if [ -n "$4" ]; then pin_time[$1]=$4; else unset "pin_time[$1]"; fi
  pinned_repos[$2]=1
}

# Pins a cached image (pinned_by: none|ours|theirs) of time $4; var says if it is pinned, why_var why not.
pin_cached() { # ref repo pinned_by time digest var why_var
  local _pin _labels=$image_labels
  printf -v "$6" %s false
  printf -v "$7" %s ''
  [ "$SSM_pin" = true ] || return 0
  if [ "$3" = theirs ]; then
    printf -v "$6" %s true
    return 0
  fi
  pin_decision "$1" "$5" "$2" "$4" _pin "$7"
  [ "$_pin" = true ] || return 0
  # Pinned by us already, with the push time sent (or none sent): no label to write. A request again does not make
  # an image newer, so its pin time stays.
  if [ "$3" = ours ] && { [ -z "$4" ] || { [[ " $_labels" =~ $pushed_re ]] && [ "${BASH_REMATCH[1]}" = "$4" ]; }; }; then
    read_pins
    pinned_repos[$2]=1
    printf -v "$6" %s true
    return 0
  fi
  if pin_name "$1" "$2" "$5" "$4"; then printf -v "$6" %s true; fi
}

# Retention: per repository pinned in this run, our pins beyond the keepPinned newest images (by time) lose our
# labels (kubelet GC may then reclaim them). Images pinned by anyone else are not listed: they lack our label.
unpinned=0
retain() {
  local repo name digest kept n count at
  [ "${#pinned_repos[@]}" -gt 0 ] || return 0
  read_pins
  for repo in "${!pinned_repos[@]}"; do
    pinned_digests "$repo" count
    [ "$count" -gt "$SSM_keepPinned" ] || continue
    kept=' ' n=0
    while read -r _ digest name; do
      if [[ "$kept" == *" $digest "* ]]; then continue; fi
      if [ "$n" -lt "$SSM_keepPinned" ]; then kept+="$digest " n=$((n + 1)); continue; fi
      changed_image "$name"
      if ctr_local images label "$name" "$PIN_LABEL=" "$OUR_LABEL=" "$PUSHED_LABEL=" >/dev/null 2>&1; then
        unpinned=$((unpinned + 1))
      fi
    done < <(for name in "${!pin_repo[@]}"; do
      [ "${pin_repo[$name]}" = "$repo" ] || continue
      pin_time_of "$name" at
      echo "${at:-0} ${pin_digest[$name]} $name"
    done | sort -rn -k1,1)
  done
}

# A failure's stable reason, from its text (whatever the containerd release's wording), into $1. Values: node_contract's
# FAILURE_REASONS. Order matters: 2.x words a 401 "pull access denied, ...: authorization failed".
failure_reason() { # var text
  local _t=${2,,} _r=other
  # HTTP status codes count only as whole words: a digest, a port or an account id in the text may hold "401" too.
  [[ $_t =~ (^|[^0-9a-z])40[13]([^0-9a-z]|$) ]] && _t+=" <http-denied>"
  [[ $_t =~ (^|[^0-9a-z])404([^0-9a-z]|$) ]] && _t+=" <http-not-found>"
  case $_t in
  "ecr login failed"*) _r=login_failed ;;
  "invalid image reference"*) _r=invalid_reference ;;
  "execution deadline"*) _r=deadline ;;
  *"timed out after"* | *"deadline exceeded"* | *"i/o timeout"* | *"timeout awaiting"*) _r=timeout ;;
  *"<http-denied>"* | *unauthorized* | *"authorization failed"* | *"no basic auth"* | *forbidden*) _r=unauthorized ;;
  *"not found"* | *"<http-not-found>"* | *"manifest unknown"* | *"name unknown"*) _r=not_found ;;
  *denied*) _r=unauthorized ;;
  *x509* | *certificate* | *tls*) _r=tls ;;
  *"no space left"* | *"disk quota"*) _r=disk ;;
  *"connection refused"* | *"no such host"* | *"connection reset"* | *unreachable* | *"no route to host"* | *eof*) _r=unreachable ;;
  esac
  printf -v "$1" %s "$_r"
}

declare -A count=([pulled]=0 [cached]=0 [skipped]=0 [failed]=0)
# Room for the records not reported yet, without their detail text (set before the first one, below).
rest_room=0
omitted=0
# One record: image, start (clock), status, digest, bytes, pinned, detail-key, detail. Detail text goes first: a
# record keeps it only if every later record still fits without its own. A record that does not fit even without it
# is left out, and counted in the summary's "omitted".
report() { # ref t0 status digest bytes pinned detail-key detail
  local body detail='' image seconds text
  count[$3]=$((count[$3] + 1))
  image_json image "$1"
  rest_room=$((rest_room - ${#image} - RECORD_ROOM))
  elapsed seconds "$2"
  body="\"image\":$image,\"status\":\"$3\""
  [ -z "$4" ] || body+=",\"digest\":\"$4\""
  body+=",\"seconds\":$seconds"
  [ -z "$5" ] || body+=",\"bytes\":$5"
  [ -z "$6" ] || body+=",\"pinned\":$6"
  if [ "$3" = failed ]; then
    failure_reason text "$8"
    body+=",\"reason\":\"$text\""
  fi
  if [ -n "$8" ]; then
    json_str text "$8" 240
    detail=",\"$7\":$text"
  fi
  if [ -n "$detail" ] && fits $((${#body} + ${#detail} + 3 + rest_room)); then
    body+=$detail
  elif ! fits $((${#body} + 3)); then
    omitted=$((omitted + 1))
    return
  fi
  emit "$body"
}

# One image, one record. A digest reference already present under its own name is done: local lookup only. A tag is
# mutable, so it is resolved against the registry first (pull_image), and is cached only if it still names the
# digest present. A tag@digest is its digest's (pulled, pinned and named by it), then named by the tag too (name_tag).
# Records name the image as it was sent ($sent); $pushed is its push time, as sent (ms), or "".
sent='' sent_tag='' pushed=''
process() { # ref pushed
  local ref=$1 t0 host repo base digest pinned_by pinned t warning='' why at
  sent=$ref sent_tag='' pushed=$2
  clock t0
  if ! [[ "$ref" =~ $ref_re ]]; then
    report "$ref" "$t0" failed '' '' '' error "invalid image reference"
    return
  fi
  host=${BASH_REMATCH[1]} repo=${BASH_REMATCH[3]} sent_tag=${BASH_REMATCH[5]}
  base="$host/$repo"
  [ -z "$sent_tag" ] || ref="$base@${ref#*@}"
  if [[ "$ref" == *@sha256:* ]] && local_image "$ref" digest pinned_by && [ "$digest" = "${ref#*@}" ]; then
    at=$pushed
    pin_cached "$ref" "$base" "$pinned_by" "$at" "$digest" pinned why
    [ -z "$sent_tag" ] || name_tag "$base" "$sent_tag" "$digest" "$at" "$pinned" warning
    join warning "$why"
    report "$sent" "$t0" cached "$digest" '' "$pinned" warning "$warning"
    return
  fi
  remaining t
  if [ "$t" -lt 5 ]; then
    report "$sent" "$t0" failed '' '' '' error "execution deadline reached before the pull"
    return
  fi
  [ "$t" -le "$SSM_pullTimeoutSeconds" ] || t=$SSM_pullTimeoutSeconds
  from_registry "$ref" "$host" "$base" "$t0" "$t"
}

join() { # var text: text appended to var's, "; " between
  [ -n "$2" ] || return 0
  if [ -n "${!1}" ]; then printf -v "$1" '%s; %s' "${!1}" "$2"; else printf -v "$1" %s "$2"; fi
}

# The pod's tag on the image of digest $3 (present), of time $4: kubelet asks the CRI for the reference a pod names,
# and a tag name that containerd lacks sends it to the registry. The tag name is pinned like the digest's ($5; 2.x's
# `ctr images tag` copies no labels). It only ever moves forward: never to an image older than the one it names (by
# push time; commands can reach a node out of order, and an older image must not replace a newer one under the name
# pods run). A warning into $6 then.
name_tag() { # base tag digest time pinned warning_var
  local name="$1:$2" current by current_time new_time=$4
  if local_image "$name" current by; then
    if [ "$current" != "$3" ]; then
      time_of "$name" current_time "$image_labels"
      # No push time sent: the image's build time stands in.
      [ -n "$new_time" ] || [ -z "$current_time" ] || created_ms "$1@$3" new_time
      if [ -n "$new_time" ] && [ -n "$current_time" ] && [ "$current_time" -gt "$new_time" ]; then
        printf -v "$6" 'tag %s not moved: it names %s, pushed later' "$2" "$current"
        return 0
      fi
    elif [ "$by" = theirs ] || { [ "$by" = ours ] && [ "$5" = true ]; } || { [ "$by" = none ] && [ "$5" = false ]; }; then
      # Already this image's name, its pins as they should be: refresh ours (retention's clock) only.
      if [ "$by" = ours ]; then pin_name "$name" "$1" "$3" "$4" || true; fi
      return 0
    fi
  fi
  changed_image "$name"
  if ! ctr_local images tag --force "$1@$3" "$name" >/dev/null 2>"$tmp/tag.err"; then
    printf -v "$6" 'tag %s not set: %s' "$2" "$(ctr_error "$tmp/tag.err" 1 0)"
    return 0
  fi
  if [ "$5" = true ]; then
    pin_name "$name" "$1" "$3" "$4" || true
  elif [ -n "$4" ]; then
    ctr_local images label "$name" "$PUSHED_LABEL=$4" >/dev/null 2>&1 || true
  fi
}

# How ctr reaches the registry: through $hosts_dir (the node's registry hosts, ECR's login), plain HTTP on loopback.
from_registry() { # ref host base t0 t
  local ref=$1 host=$2
  local -a reg_args=(--hosts-dir "$hosts_dir")
  case ${host%:*} in
  localhost | 127.*) reg_args+=(--plain-http) ;;
  esac
  if ! registry_hosts "$host"; then
    report "$sent" "$4" failed '' '' '' error "${login_error[$host]}"
    return
  fi
  pull_image "$ref" "$3" "$4" "$5" "$host" "${reg_args[@]}"
}

# ctr's release, and whether 2.x's transfer service could pull for the CRI: where it unpacks for the CRI's
# snapshotter (its default, overlayfs) and `connections` allows its own limit (3 by default).
ctr_major='' ctr_minor=0 transfer_possible=false
ctr_release() {
  [ -z "$ctr_major" ] || return 0
  ctr_major=0
  if [[ "$ctr_version_text" =~ Version:[[:space:]]+v?([0-9]+)\.([0-9]+) ]]; then
    ctr_major=${BASH_REMATCH[1]} ctr_minor=${BASH_REMATCH[2]}
  fi
  if [ "$ctr_major" -ge 2 ] && [ "$cri_snapshotter" = overlayfs ] && [ "$SSM_connections" -ge 3 ]; then
    transfer_possible=true
  fi
}
# How ctr pulls, as the CRI would (its snapshotter), into pull_flags: in its own process (`--local`, as 1.6 and 1.7
# always do; 1.x bounds its fetch by --max-concurrent-downloads), or in 2.x's transfer service (the daemon pulls).
pull_flags=()
set_pull_flags() {
  pull_flags=(--snapshotter "$cri_snapshotter")
  if [ "$ctr_local_pull" = false ]; then
    pull_flags+=(--skip-metadata)
    return 0
  fi
  pull_flags+=(--max-concurrent-downloads "$SSM_connections")
  if [ "$ctr_major" -ge 2 ] || [ "$ctr_minor" -ge 7 ]; then pull_flags+=(--local); fi
}

# After the pull: the manifest's hold released (and, with the CRI's discard_unpacked_layers, its layer references:
# ctr's pull labels them, the CRI's does not), then containerd's garbage collection, now, as the CRI's pull ends.
settle_pull() { # platform-digest layer-count
  local unheld=''
  if [ -n "$protected" ]; then
    release_manifest "$protected" "$2"
    unheld=1
  elif [ "$cri_discard" = true ]; then
    release_manifest "$1" "$2"
  fi
  if [ "$cri_discard" = true ] || [ -n "$unheld" ]; then
    # A lease deleted with --sync runs the garbage collection before it returns.
    ctr_local leases create --id "eks-image-prefetch-gc-$$" --expires 1m >/dev/null 2>&1 || true
    ctr_local leases rm --sync "eks-image-prefetch-gc-$$" >/dev/null 2>&1 || true
  fi
}

# Disk guard, then the pull. The estimate is the platform manifest's compressed size, times 3 where the compressed
# blobs stay beside their unpacked snapshot (typically twice their size), times 2 where the CRI discards them. Layers
# already present count again, which errs on the safe side. Without an estimate (an unreadable manifest), the current
# usage must be below the limit, and usage is re-checked after the pull.
pull_image() { # ref base t0 t host registry-args...
  local ref=$1 base=$2 t0=$3 t=$4 host=$5 bytes='' manifest_digest='' error='' digest='' pinned_by pinned pct=0 needed rc
  local warning='' why='' at platform layers factor=3 repo
  local -a labels=()
  shift 5
  repo=${base#*/}
  local estimated=0
  estimate "$ref" "$base" "$t" bytes manifest_digest error "$@" || estimated=$?
  if [ "$estimated" -eq 3 ]; then
    platform_skip "$sent" "$t0"
    return
  elif [ "$estimated" -ne 0 ]; then
    report "$sent" "$t0" failed '' '' '' error "$error"
    return
  fi
  platform=$est_platform
  manifest_layers "$est_manifest"
  layers=${#layer_digests[@]}
  if [[ "$ref" != *@sha256:* ]] && local_image "$ref" digest pinned_by && [ "$digest" = "$manifest_digest" ]; then
    pin_cached "$ref" "$base" "$pinned_by" "$pushed" "$digest" pinned why
    report "$sent" "$t0" cached "$digest" "$bytes" "$pinned" warning "$why"
    return
  fi
  [ "$cri_discard" = false ] || factor=2
  needed=$(((${bytes:-0} * factor + 1023) / 1024))
  if ! disk_ok pct "$needed"; then
    report "$sent" "$t0" skipped '' "$bytes" '' reason \
      "disk: ${pct}% used after this pull > maxDiskUsagePercent ${SSM_maxDiskUsagePercent} on $disk_path"
    return
  fi
  [[ "$ref" == *@sha256:* ]] && digest=${ref#*@} || digest=$manifest_digest
  # Pinned with the pull itself (one ctr call fewer than labelling afterwards), unless newer images keep the pins.
  pinned=false
  pin_decision "$ref" "$digest" "$base" "$pushed" pinned why
  if [ "$pinned" = true ]; then
    labels=(--label "$PIN_LABEL=$PIN_VALUE" --label "$OUR_LABEL=$(date +%s%N)")
  fi
  [ -z "$pushed" ] || [ "$pinned" = false ] || labels+=(--label "$PUSHED_LABEL=$pushed")
  remaining t
  [ "$t" -le "$SSM_pullTimeoutSeconds" ] || t=$SSM_pullTimeoutSeconds
  ctr_release
  plan_fetch "$host" "$base" "$@"
  fetch_left=0
  if [ "${#fetch_wanted[@]}" -gt 0 ]; then
    if start_fetch "$repo" "$platform" "$t"; then
      finish_fetch "$host"
    else
      fetch_left=${#fetch_wanted[@]}
    fi
    bound_containerd $((plan_missing - ${#fetch_wanted[@]} + fetch_left))
  fi
  set_pull_flags
  warning=$fetch_note
  remaining t
  [ "$t" -le "$SSM_pullTimeoutSeconds" ] || t=$SSM_pullTimeoutSeconds
  changed_image "$ref"
  set +e
  timeout -k 5 "$t" ctr -n "$NS" images pull "$@" "${pull_flags[@]}" ${labels[@]+"${labels[@]}"} "$ref" \
    >/dev/null 2>"$tmp/pull.err"
  rc=$?
  set -e
  if [ "$rc" -ne 0 ]; then
    settle_pull "$platform" "$layers"
    if grep -q 'no match for platform' "$tmp/pull.err"; then
      # A single-platform manifest of another OS/architecture: containerd checks its config.
      platform_skip "$sent" "$t0"
    else
      report "$sent" "$t0" failed '' "$bytes" '' error "$(ctr_error "$tmp/pull.err" "$rc" "$t")"
    fi
    return
  fi
  settle_pull "$platform" "$layers"
  # A digest reference names its digest; what a tag resolved to is read back from containerd.
  if [[ "$ref" != *@sha256:* ]] && ! local_image "$ref" digest pinned_by; then
    report "$sent" "$t0" failed '' "$bytes" '' error "pulled, but containerd has no image of that name"
    return
  fi
  [ "$pinned" = false ] || note_pin "$ref" "$base" "$digest" "$pushed"
  [ -z "$sent_tag" ] || name_tag "$base" "$sent_tag" "$digest" "$pushed" "$pinned" warning
  join warning "$why"
  if ! disk_ok pct 0; then
    join warning "disk: ${pct}% used after this pull > maxDiskUsagePercent ${SSM_maxDiskUsagePercent}"
  fi
  report "$sent" "$t0" pulled "$digest" "$bytes" "$pinned" warning "$warning"
}

refs=() pushes=()
if [ -n "$SSM_images" ]; then IFS=',' read -r -a refs <<<"$SSM_images"; fi
if [ -n "$SSM_pushedAt" ]; then IFS=',' read -r -a pushes <<<"$SSM_pushedAt,"; fi
ref_json=''
for ref in ${refs[@]+"${refs[@]}"}; do
  image_json ref_json "$ref"
  rest_room=$((rest_room + ${#ref_json} + RECORD_ROOM))
done
for i in ${refs[@]+"${!refs[@]}"}; do
  process "${refs[i]}" "${pushes[i]:-}"
done
retain
# The usage now: 0 when df cannot tell.
disk_pct=0
disk_ok disk_pct 0 || true
run_seconds=0
elapsed run_seconds "$started"
summary_warning=''
if [ -n "$run_warning" ]; then
  json_str summary_warning "$run_warning" 300
  summary_warning=",\"warning\":$summary_warning"
fi
emit "\"summary\":true,\"images\":${#refs[@]},\"pulled\":${count[pulled]},\"cached\":${count[cached]},\"skipped\":${count[skipped]},\"failed\":${count[failed]},\"unpinned\":$unpinned,\"disk_used_percent\":$disk_pct,\"seconds\":$run_seconds,\"omitted\":$omitted$summary_warning"
[ "${count[failed]}" -eq 0 ]
