#!/bin/bash
# EKS Image Prefetch node script. Runs as root under the SSM agent, on bash >= 4.2 (Amazon Linux 2).
# Prints one JSON object per image, then a summary object; exits 0 only if no image failed.
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
ref_re='@SCRIPT_REFERENCE_RE@'
digest_re='@DIGEST_RE@'
pin_re='[ ,]@PIN_LABEL_RE@=@PIN_VALUE_RE@([ ,]|$)'
ours_re='[ ,]@OUR_PIN_LABEL_RE@=([0-9]+)([ ,]|$)'
margin_divisor='@DEADLINE_MARGIN_DIVISOR@'
margin_min='@DEADLINE_MARGIN_MIN_SECONDS@'
margin_max='@DEADLINE_MARGIN_MAX_SECONDS@'
export CONTAINERD_ADDRESS="${CONTAINERD_ADDRESS:-/run/containerd/containerd.sock}"
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
[[ "$execution_timeout" =~ ^[1-9][0-9]{1,5}$ ]] || execution_timeout=3600

# A node without containerd's socket is one this application cannot serve (Bottlerocket's control container, a
# runtime other than containerd, containerd listening elsewhere): the summary says so with "unsupported" and the run
# exits 0, touching nothing. The status function then leaves the node out of coverage and self-repair instead of
# counting a failure on every push. Where containerd is installed, its socket may not be there yet (a new node's
# command can arrive before containerd has started, or during a restart): it is awaited a while first.
# PREFETCH_SOCKET_WAIT_SECONDS stands in for the wait in tests.
unsupported() { # a node this application cannot serve: a summary with the reason, no image touched, exit 0
  local reason seconds
  json_str reason "$1" 300
  elapsed seconds "$started"
  emit "\"summary\":true,\"images\":0,\"failed\":0,\"omitted\":0,\"unsupported\":$reason,\"seconds\":$seconds"
  exit 0
}
socket=${CONTAINERD_ADDRESS#unix://}
if [ ! -S "$socket" ] && command -v containerd >/dev/null 2>&1; then
  socket_wait=${PREFETCH_SOCKET_WAIT_SECONDS:-@CONTAINERD_SOCKET_WAIT_SECONDS@}
  [[ "$socket_wait" =~ ^[0-9]{1,4}$ ]] || socket_wait=@CONTAINERD_SOCKET_WAIT_SECONDS@
  [ "$socket_wait" -le $((execution_timeout / 2)) ] || socket_wait=$((execution_timeout / 2))
  socket_deadline=$((SECONDS + socket_wait))
  while [ ! -S "$socket" ] && [ "$SECONDS" -lt "$socket_deadline" ]; do sleep 1; done
fi
[ -S "$socket" ] || unsupported "@NO_CONTAINERD_SOCKET@ at $socket"
command -v ctr >/dev/null 2>&1 || fatal "ctr not found on PATH"

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
fi

# ctr calls that only talk to the local containerd: bounded all the same.
ctr_local() { timeout -k 5 60 ctr -n "$NS" "$@"; }

# containerd's root filesystem, for the disk guard: CONTAINERD_ROOT, else root = "..." from the top of
# /etc/containerd/config.toml (keys before the first [table]), else the default; the nearest existing directory.
disk_path=${CONTAINERD_ROOT:-}
if [ -z "$disk_path" ]; then
  disk_path=/var/lib/containerd
  if [ -r /etc/containerd/config.toml ]; then
    root_re="^[[:space:]]*root[[:space:]]*=[[:space:]]*[\"']([^\"']+)[\"']"
    while IFS= read -r line || [ -n "$line" ]; do
      case $line in \[*) break ;; esac
      if [[ "$line" =~ $root_re ]]; then disk_path=${BASH_REMATCH[1]}; fi
    done </etc/containerd/config.toml
  fi
fi
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

# The local image of exactly this name (no network): its digest into $2 and who pinned it (none|ours|theirs) into
# $3. Fails when containerd has none.
local_image() { # ref digest_var pinned_var
  local _line _name _type _digest _rest _pinned=none
  _line=$(ctr_local images ls "name==$1" 2>/dev/null | tail -n +2 | head -n 1) || return 1
  [ -n "$_line" ] || return 1
  read -r _name _type _digest _rest <<<"$_line"
  [ "$_name" = "$1" ] && [[ "$_digest" =~ $digest_re ]] || return 1
  if [[ " $_rest" =~ $pin_re ]]; then
    _pinned=theirs
    if [[ " $_rest" =~ $ours_re ]]; then _pinned=ours; fi
  fi
  printf -v "$2" %s "$_digest"
  printf -v "$3" %s "$_pinned"
}

# ECR: one login per registry and run, with the node's instance role. The token goes into a hosts.toml
# Authorization header under $tmp (0700), read by ctr --hosts-dir: never in argv, never printed. (ctr --user
# takes the password only in argv, or prompts on a terminal the agent does not have.) Go drops the header on the
# redirect of layer downloads to S3, another domain.
declare -A login_error=()
ecr_login() { # host region -> 0, or 1 with login_error[host]
  local host=$1 region=$2 token b64 dir="$tmp/hosts/$1" t
  [ -f "$dir/hosts.toml" ] && return 0
  [ -z "${login_error[$host]:-}" ] || return 1
  remaining t
  [ "$t" -le 60 ] || t=60
  if ! command -v aws >/dev/null 2>&1; then
    login_error[$host]="ECR login failed: aws CLI not found"
    return 1
  fi
  if ! token=$(timeout -k 5 "$t" aws ecr get-login-password --region "$region" 2>"$tmp/aws.err") || [ -z "$token" ]; then
    login_error[$host]="ECR login failed: $(tail -n 3 "$tmp/aws.err" | paste -sd " " -)"
    return 1
  fi
  b64=$(printf 'AWS:%s' "$token" | base64 -w0)
  mkdir -p "$dir"
  printf 'server = "https://%s"\n[host."https://%s"]\n  capabilities = ["pull", "resolve"]\n  [host."https://%s".header]\n    Authorization = ["Basic %s"]\n' \
    "$host" "$host" "$host" "$b64" >"$dir/hosts.toml"
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
# digest into digest_var, from the registry before pulling. Fails with the reason in error_var when the registry
# refuses the reference (the pull would).
estimate() { # ref base t bytes_var digest_var error_var registry-args...
  local _ref=$1 _base=$2 _t=$3 _bytes_var=$4 _digest_var=$5 _error_var=$6
  local _manifest _child _n _size_re
  shift 6
  fetch_manifest "$_ref" "$tmp/manifest" "$_t" "$_error_var" "$@" || return 1
  printf -v "$_digest_var" 'sha256:%s' "$(sha256sum "$tmp/manifest" | cut -c1-64)"
  _manifest=$(tr -d '\n\r' <"$tmp/manifest")
  if [[ "$_manifest" =~ \"manifests\"[[:space:]]*: ]]; then
    # An index: the entry for this node's platform (ctr's default), then its manifest.
    # No entry for this node's platform: the image is not for this node (platform_skip).
    platform_child "$_manifest" _child || return 3
    fetch_manifest "$_base@$_child" "$tmp/manifest" "$_t" "$_error_var" "$@" || return 1
    _manifest=$(tr -d '\n\r' <"$tmp/manifest")
  fi
  _size_re='"size"[[:space:]]*:[[:space:]]*([0-9]{1,15})'
  _n=0
  while [[ "$_manifest" =~ $_size_re ]]; do
    _n=$((_n + BASH_REMATCH[1]))
    _manifest=${_manifest#*"${BASH_REMATCH[0]}"}
  done
  [ "$_n" -eq 0 ] || printf -v "$_bytes_var" %d "$_n"
}

# Pin: our two labels, unless someone else pinned this image (then it is theirs and we never unpin it).
# pinned-at is refreshed on every request, so retention keeps the most recently requested versions.
declare -A pinned_repos=()
pin_cached() { # ref repo pinned_by var: pins a cached image (pinned_by: none|ours|theirs); var says if it is pinned
  local _pinned=false
  if [ "$SSM_pin" = true ]; then
    if [ "$3" = theirs ]; then
      _pinned=true
    elif ctr_local images label "$1" "$PIN_LABEL=$PIN_VALUE" "$OUR_LABEL=$(date +%s%N)" \
      >/dev/null 2>"$tmp/label.err"; then
      _pinned=true
      pinned_repos[$2]=1
    fi
  fi
  printf -v "$4" %s "$_pinned"
}

# Retention: per repository pinned in this run, our pins beyond the keepPinned most recent digests lose both labels
# (kubelet GC may then reclaim them). Images pinned by anyone else are not listed: they lack our label.
unpinned=0
retain() {
  local repo name _type digest rest _at host path kept=' ' n=0
  [ "${#pinned_repos[@]}" -gt 0 ] || return 0
  ctr_local images ls "labels.\"$OUR_LABEL\"" 2>/dev/null | tail -n +2 >"$tmp/ours" || return 0
  for repo in "${!pinned_repos[@]}"; do
    kept=' ' n=0
    while read -r _at digest name; do
      if [[ "$kept" == *" $digest "* ]]; then continue; fi
      if [ "$n" -lt "$SSM_keepPinned" ]; then kept+="$digest " n=$((n + 1)); continue; fi
      if ctr_local images label "$name" "$PIN_LABEL=" "$OUR_LABEL=" >/dev/null 2>&1; then unpinned=$((unpinned + 1)); fi
    done < <(while read -r name _type digest rest; do
      host=${name%%/*} path=${name#*/}
      path=${path%%@*} path=${path%%:*}
      [ "$host/$path" = "$repo" ] || continue
      [[ " $rest" =~ $ours_re ]] || continue
      echo "${BASH_REMATCH[1]} $digest $name"
    done <"$tmp/ours" | sort -rn)
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
# Records name the image as it was sent ($sent).
sent='' sent_tag=''
process() { # ref
  local ref=$1 t0 host repo base digest pinned_by pinned t warning=''
  sent=$ref sent_tag=''
  clock t0
  if ! [[ "$ref" =~ $ref_re ]]; then
    report "$ref" "$t0" failed '' '' '' error "invalid image reference"
    return
  fi
  host=${BASH_REMATCH[1]} repo=${BASH_REMATCH[3]} sent_tag=${BASH_REMATCH[5]}
  base="$host/$repo"
  [ -z "$sent_tag" ] || ref="$base@${ref#*@}"
  if [[ "$ref" == *@sha256:* ]] && local_image "$ref" digest pinned_by && [ "$digest" = "${ref#*@}" ]; then
    pin_cached "$ref" "$base" "$pinned_by" pinned
    [ -z "$sent_tag" ] || name_tag "$base" "$sent_tag" "$digest" warning
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

# The image's build time from its config's "created" (local content; this node's platform of an index), into $2 as
# YYYY-MM-DDTHH:MM:SS.nnnnnnnnn (compared as text); "" when it cannot tell.
created_of() { # ref var
  local digest by json frac
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
  [[ "$json" =~ \"created\"[[:space:]]*:[[:space:]]*\"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})(\.[0-9]+)? ]] || return 0
  frac="${BASH_REMATCH[2]#.}000000000"
  printf -v "$2" '%s.%s' "${BASH_REMATCH[1]}" "${frac:0:9}"
}

# The pod's tag on the image of digest $3 (present): kubelet asks the CRI for the reference a pod names, and a tag
# name that containerd lacks sends it to the registry. The tag name is pinned like the digest's (2.x's `ctr images
# tag` copies no labels). It never moves to an image built before the one it names here: commands can reach a node
# out of order, and an older image must not replace a newer one under the name pods run. A warning into $4 then.
name_tag() { # base tag digest warning_var
  local name="$1:$2" current by new old
  if local_image "$name" current by; then
    if [ "$current" != "$3" ]; then
      created_of "$1@$3" new
      created_of "$name" old
      if [[ -n "$new" && -n "$old" && "$new" < "$old" ]]; then
        printf -v "$4" 'tag %s not moved: it names %s, built later' "$2" "$current"
        return 0
      fi
    elif [ "$by" = theirs ] || { [ "$by" = ours ] && [ "$SSM_pin" = true ]; } || [ "$SSM_pin" = false ]; then
      # Already this image's name, its pins as they should be: refresh ours (retention's clock) only.
      [ "$by" != ours ] || ctr_local images label "$name" "$OUR_LABEL=$(date +%s%N)" >/dev/null 2>&1 || true
      return 0
    fi
  fi
  if ! ctr_local images tag --force "$1@$3" "$name" >/dev/null 2>"$tmp/tag.err"; then
    printf -v "$4" 'tag %s not set: %s' "$2" "$(ctr_error "$tmp/tag.err" 1 0)"
    return 0
  fi
  if [ "$SSM_pin" = true ]; then
    ctr_local images label "$name" "$PIN_LABEL=$PIN_VALUE" "$OUR_LABEL=$(date +%s%N)" >/dev/null 2>&1 || true
  fi
}

# How ctr reaches the registry: plain HTTP on loopback; for ECR, after a login, through its hosts.toml. Then the pull.
from_registry() { # ref host base t0 t
  local ref=$1 host=$2 region
  local -a reg_args=()
  case ${host%:*} in
  localhost | 127.*) reg_args+=(--plain-http) ;;
  esac
  if [[ "$host" =~ $ecr_re ]]; then
    region=${BASH_REMATCH[2]}
    if ! ecr_login "$host" "$region"; then
      report "$sent" "$4" failed '' '' '' error "${login_error[$host]}"
      return
    fi
    reg_args+=(--hosts-dir "$tmp/hosts")
  fi
  pull_image "$ref" "$3" "$4" "$5" ${reg_args[@]+"${reg_args[@]}"}
}

# Disk guard, then the pull. The estimate is the platform manifest's compressed size, times 3: ctr keeps the
# compressed blobs and unpacks them into a snapshot, typically twice their size. Layers already present count again,
# which errs on the safe side. Without an estimate (an unreadable manifest), the current usage must be below the
# limit, and usage is re-checked after the pull.
pull_image() { # ref base t0 t registry-args...
  local ref=$1 base=$2 t0=$3 t=$4 bytes='' manifest_digest='' error='' digest='' pinned_by pinned pct=0 needed rc
  local warning
  local -a labels=()
  shift 4
  local estimated=0
  estimate "$ref" "$base" "$t" bytes manifest_digest error "$@" || estimated=$?
  if [ "$estimated" -eq 3 ]; then
    platform_skip "$sent" "$t0"
    return
  elif [ "$estimated" -ne 0 ]; then
    report "$sent" "$t0" failed '' '' '' error "$error"
    return
  fi
  if [[ "$ref" != *@sha256:* ]] && local_image "$ref" digest pinned_by && [ "$digest" = "$manifest_digest" ]; then
    pin_cached "$ref" "$base" "$pinned_by" pinned
    report "$sent" "$t0" cached "$digest" "$bytes" "$pinned" '' ''
    return
  fi
  needed=$(((${bytes:-0} * 3 + 1023) / 1024))
  if ! disk_ok pct "$needed"; then
    report "$sent" "$t0" skipped '' "$bytes" '' reason \
      "disk: ${pct}% used after this pull > maxDiskUsagePercent ${SSM_maxDiskUsagePercent} on $disk_path"
    return
  fi
  remaining t
  [ "$t" -le "$SSM_pullTimeoutSeconds" ] || t=$SSM_pullTimeoutSeconds
  # The pin labels go on with the pull itself: one ctr call fewer than labelling afterwards.
  if [ "$SSM_pin" = true ]; then
    labels=(--label "$PIN_LABEL=$PIN_VALUE" --label "$OUR_LABEL=$(date +%s%N)")
  fi
  set +e
  timeout -k 5 "$t" ctr -n "$NS" images pull "$@" ${labels[@]+"${labels[@]}"} "$ref" >/dev/null 2>"$tmp/pull.err"
  rc=$?
  set -e
  if [ "$rc" -ne 0 ] && grep -q 'no match for platform' "$tmp/pull.err"; then
    # A single-platform manifest of another OS/architecture: containerd checks its config.
    platform_skip "$sent" "$t0"
    return
  elif [ "$rc" -ne 0 ]; then
    report "$sent" "$t0" failed '' "$bytes" '' error "$(ctr_error "$tmp/pull.err" "$rc" "$t")"
    return
  fi
  [ "$SSM_pin" = false ] || pinned_repos[$base]=1
  # A digest reference names its digest; what a tag resolved to is read back from containerd.
  if [[ "$ref" == *@sha256:* ]]; then
    digest=${ref#*@}
  elif ! local_image "$ref" digest pinned_by; then
    report "$sent" "$t0" failed '' "$bytes" '' error "pulled, but containerd has no image of that name"
    return
  fi
  warning=''
  [ -z "$sent_tag" ] || name_tag "$base" "$sent_tag" "$digest" warning
  if disk_ok pct 0; then
    report "$sent" "$t0" pulled "$digest" "$bytes" "$SSM_pin" warning "$warning"
  else
    report "$sent" "$t0" pulled "$digest" "$bytes" "$SSM_pin" warning \
      "disk: ${pct}% used after this pull > maxDiskUsagePercent ${SSM_maxDiskUsagePercent}${warning:+; $warning}"
  fi
}

refs=()
if [ -n "$SSM_images" ]; then IFS=',' read -r -a refs <<<"$SSM_images"; fi
ref_json=''
for ref in ${refs[@]+"${refs[@]}"}; do
  image_json ref_json "$ref"
  rest_room=$((rest_room + ${#ref_json} + RECORD_ROOM))
done
for ref in ${refs[@]+"${refs[@]}"}; do
  process "$ref"
done
retain
# The usage now: 0 when df cannot tell.
disk_pct=0
disk_ok disk_pct 0 || true
run_seconds=0
elapsed run_seconds "$started"
emit "\"summary\":true,\"images\":${#refs[@]},\"pulled\":${count[pulled]},\"cached\":${count[cached]},\"skipped\":${count[skipped]},\"failed\":${count[failed]},\"unpinned\":$unpinned,\"disk_used_percent\":$disk_pct,\"seconds\":$run_seconds,\"omitted\":$omitted"
[ "${count[failed]}" -eq 0 ]
