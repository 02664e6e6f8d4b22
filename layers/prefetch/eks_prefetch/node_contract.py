"""Values the node script and the functions must agree on: one source for both.

`make template` (document/generate.py) writes them into the SSM document in template.yaml, its script and its
parameters' patterns; the functions, the harness and the tests import them from here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

# --- Image references the document accepts (its `images` allowedPattern, and the script's own check) ------------
# registry host[:port] / repository path, then @digest, :tag, or :tag@digest (Docker's grammar: the tag a pod names and
# the digest it named when sent; the node pulls the digest and names it by the tag too). Narrower than OCI's grammar
# on purpose: no character a shell treats specially, no newline (it would end the script's here-document on an agent
# that pastes parameters).
REGISTRY_PATTERN = r"[a-z0-9][a-z0-9.-]{0,252}(:[0-9]{1,5})?"
REPOSITORY_PATH_PATTERN = r"[a-z0-9][a-z0-9._/-]{0,255}"
DIGEST_PATTERN = r"sha256:[a-f0-9]{64}"
# OCI's tag rule (128 characters); ECR allows longer tags: the functions send such a tag's image by digest alone.
REFERENCE_TAG_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}"
_SUFFIX = f":{REFERENCE_TAG_PATTERN}@{DIGEST_PATTERN}|@{DIGEST_PATTERN}|:{REFERENCE_TAG_PATTERN}"
REFERENCE_PATTERN = f"{REGISTRY_PATTERN}/{REPOSITORY_PATH_PATTERN}({_SUFFIX})"

# The document's images parameter takes at most this many references (its allowedPattern counts them).
MAX_IMAGES_PER_COMMAND = 50
IMAGES_ALLOWED_PATTERN = f"^{REFERENCE_PATTERN}(,{REFERENCE_PATTERN}){{0,{MAX_IMAGES_PER_COMMAND - 1}}}$"
# The document's pushedAt parameter: one push time (ms since the epoch) per image of `images`, in its order, or an
# empty entry where none is known (node_contract.PUSHED_AT_LABEL).
PUSHED_AT_ALLOWED_PATTERN = f"^([0-9]{{1,15}})?(,([0-9]{{1,15}})?){{0,{MAX_IMAGES_PER_COMMAND - 1}}}$"
# The script's check of one reference, as a bash ERE: groups 1 registry, 3 repository path, 5 the tag of tag@digest.
SCRIPT_REFERENCE_RE = (
    f"^({REGISTRY_PATTERN})/({REPOSITORY_PATH_PATTERN})"
    f"(:({REFERENCE_TAG_PATTERN})@{DIGEST_PATTERN}|@{DIGEST_PATTERN}|:{REFERENCE_TAG_PATTERN})$"
)


def push_time_ms(pushed_at: datetime) -> int:
    """An image's push time as the document's pushedAt takes it: ms since the epoch (a naive time is UTC)."""
    if pushed_at.tzinfo is None:
        pushed_at = pushed_at.replace(tzinfo=UTC)
    return int(pushed_at.timestamp() * 1000)


def reference(registry: str, repository: str, digest: str, tag: str | None = None) -> str:
    """What the functions send a node: ``registry/repository:tag@digest`` when the tag fits the document's grammar
    (the node then names the image by the tag too), else ``registry/repository@digest``."""
    base = f"{registry}/{repository}"
    if tag and _TAG_RE.fullmatch(tag):
        return f"{base}:{tag}@{digest}"
    return f"{base}@{digest}"


# --- Failures -------------------------------------------------------------------------------------------------------
# A failed record's "reason": stable whatever the containerd release's wording (its text stays in "error").
FAILURE_REASONS = (
    "unauthorized",
    "not_found",
    "timeout",
    "tls",
    "unreachable",
    "disk",
    "login_failed",
    "deadline",
    "invalid_reference",
    "other",
)

# --- Pins ---------------------------------------------------------------------------------------------------------
# containerd's CRI exempts an image with this label (value PIN_VALUE) from kubelet's image GC.
PIN_LABEL = "io.cri-containerd.pinned"
PIN_VALUE = "pinned"
# Our mark on the pins we made (value: when, in ns since the epoch): retention only ever unpins images carrying it.
OUR_PIN_LABEL = "eks-image-prefetch/pinned-at"
# When the registry received the image's push (ms since the epoch; the functions send it as pushedAt), on each name
# this document pins: a tag only ever moves to a later push, and retention keeps the newest pushes pinned. Where no
# push time was sent, the image's build time ("created") stands in.
PUSHED_AT_LABEL = "eks-image-prefetch/pushed-at"
# One prefetch or unpin run at a time on a node: both scripts take this lock (a test may point it elsewhere).
LOCK_FILE = "/run/lock/eks-image-prefetch.lock"

# --- Platform skips -----------------------------------------------------------------------------------------------
# The reason of a "skipped" record for an image with no manifest for the node's OS/architecture starts with this:
# the node is then not applicable for that image (outside its coverage, never repaired for it).
PLATFORM_SKIP_REASON = "platform"

# --- Nodes the document cannot serve --------------------------------------------------------------------------------
# A run that finds no containerd socket prints a summary whose "unsupported" starts with this, touches nothing and
# exits 0: the status function leaves the node out of coverage and self-repair (not a failure, not an alarm).
NO_CONTAINERD_SOCKET = "no containerd socket"
# Where containerd is installed but does not answer yet (a new node's first command can arrive before nodeadm has
# started it, or during a restart), the script awaits it this long, then fails the run with an error starting with
# CONTAINERD_NOT_UP: a failure that repair retries, never "unsupported" (which is for nodes with no containerd).
CONTAINERD_SOCKET_WAIT_SECONDS = 60
CONTAINERD_NOT_UP = "containerd not up"

# --- How fast a node pulls ------------------------------------------------------------------------------------------
# A pull's layers come over at most `connections` connections at once (the document's parameter; kubelet's CRI pull
# opens 3): several layers at once, and where that is faster than containerd's own fetch, layers of more than
# RANGE_CHUNK_BYTES as parallel byte ranges of that size (S3, which serves ECR's layers, budgets 8-16 MB per ranged
# request). The default is measured (BENCHMARKS.md, "Node pull against kubelet's").
DEFAULT_CONNECTIONS = 8
MAX_CONNECTIONS = 32
# The document's `connections` parameter: 1 to MAX_CONNECTIONS.
CONNECTIONS_ALLOWED_PATTERN = "^([1-9]|[12][0-9]|3[0-2])$"
RANGE_CHUNK_BYTES = 16 << 20

# --- The run's deadline ---------------------------------------------------------------------------------------------
# The script ends its run this margin before the agent's executionTimeout kills it, to report: a tenth of the
# timeout, 5 to 60 s. A pull timeout must fit before that deadline.
DEADLINE_MARGIN_DIVISOR = 10
DEADLINE_MARGIN_MIN_SECONDS = 5
DEADLINE_MARGIN_MAX_SECONDS = 60


def deadline_margin_seconds(execution_timeout_seconds: int) -> int:
    """The margin the script keeps before the agent's execution timeout (the script computes it the same way)."""
    margin = execution_timeout_seconds // DEADLINE_MARGIN_DIVISOR
    return min(max(margin, DEADLINE_MARGIN_MIN_SECONDS), DEADLINE_MARGIN_MAX_SECONDS)


_TAG_RE = re.compile(REFERENCE_TAG_PATTERN)


# --- Which managed nodes the document can serve at all ------------------------------------------------------------
# EKS Auto Mode nodes are EC2 managed instances that EKS operates, and AWS allows neither SSH nor SSM on them: no
# command reaches them. EC2 says so in the instance's Operator (Managed, by an EKS principal), and Auto Mode tags the
# instances it launches eks:kubernetes-node-class-name and eks:kubernetes-node-pool-name (with eks:eks-cluster-name;
# EKS user guide, "Learn about Amazon EKS Auto Mode Managed instances" and the Auto Mode cluster role's tag policy).
AUTO_MODE_NODE = "EKS Auto Mode node: AWS allows no SSM on it, so no command can reach it"
AUTO_MODE_TAG = "eks:kubernetes-node-class-name"


def auto_mode_reason(instance: Mapping[str, Any]) -> str | None:
    """AUTO_MODE_NODE for an EKS Auto Mode instance (DescribeInstances' description of it), else None."""
    operator = instance.get("Operator") or {}
    if operator.get("Managed") and "eks" in str(operator.get("Principal") or "").lower():
        return AUTO_MODE_NODE
    if any(tag.get("Key") == AUTO_MODE_TAG for tag in instance.get("Tags") or ()):
        return AUTO_MODE_NODE
    return None


def unsupported_reason(info: Mapping[str, Any]) -> str | None:
    """Why a managed node cannot be served, from DescribeInstanceInformation; None when it can. The document's script
    needs a Linux host with containerd's socket and ctr: Windows has neither (the document's precondition keeps the
    script off it), and Bottlerocket keeps containerd out of reach of the SSM agent's control container."""
    platform_type = str(info.get("PlatformType") or "")
    platform_name = str(info.get("PlatformName") or "")
    if platform_type and platform_type != "Linux":
        return f"{platform_type} node: the document runs on Linux only"
    if "bottlerocket" in platform_name.lower():
        return "Bottlerocket node: containerd is not reachable from the SSM agent's control container"
    return None
