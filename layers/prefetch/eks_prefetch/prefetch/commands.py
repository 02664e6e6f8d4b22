"""The SendCommand request for a prefetch: one implementation for every path that sends one, and how many nodes
pull at once (its MaxConcurrency)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from eks_prefetch.images import ResolvedImage
from eks_prefetch.node_contract import DEFAULT_CONNECTIONS, MAX_IMAGES_PER_COMMAND, push_time_ms
from eks_prefetch.settings import CommandSettings

# SSM's limit on a command's Comment.
_COMMENT_LIMIT = 100
# The new-node path's commands open their Comment with this, and the instance's launch time. GetCommandInvocation
# returns the Comment, so the status function tells from the invocation alone that a report answers a launch
# (LaunchToCachedSeconds is measured from those only), and since when, without asking EC2. At the start, because
# shortening cuts the end and the event marker is appended there. "new node: " alone: a command sent before the
# launch time was written there.
NEW_NODE_COMMENT_PREFIX = "new node"
_NEW_NODE_COMMENT = re.compile(r"^new node(?: launched ([0-9]{8}T[0-9]{6}Z))?: ")
_LAUNCH_FORMAT = "%Y%m%dT%H%M%SZ"

# --- How many nodes pull at once: the registry path's budget over what one node's pull asks of it ------------------

# What one node's pull asks of the registry path: the rule's assumptions (docs/scale.md). Kubelet's pull takes ~109 s
# for a 3.5 GB (compressed) image on a fresh node (README), ~32 MB/s. The prefetch pulls faster: it opens up to
# `connections` (8) connections and fetches a big layer as parallel byte ranges, in 0.34-0.43x of kubelet's time for
# one big layer and 0.48-0.54x for 7 layers (bench section 9's runs, containerd 1.7 and 2.x, 20 MB/s per connection;
# 0.34: 2.1.9, one layer of 320 MB, the run that landed with issue 28). The budget holds for the fastest: 3.5 GB in
# 109 s x 0.34 = ~37 s, ~94 MB/s. A pull is budgeted at 97 MB/s, a few percent above, for the fluctuation of the
# pulls running at once (bench section 1, its pulls scaled to this model: at most ~48.5 of 50 Gbit/s asked). Slower
# shapes (many small layers) ask less and leave part of it unused.
KUBELET_PULL_SECONDS = 109
KUBELET_PULL_BYTES = 3.5e9
FASTEST_PREFETCH_TO_KUBELET = 0.34
PULL_BYTES_PER_SECOND = 97e6
# ...after a fixed time per image, whatever its size (resolving, the last layer's unpacking, pinning): the document's
# run of a tiny image (BENCHMARKS.md section 4), the least it can be, so that a small image is never given more pulls
# at once than the budget carries.
PULL_FIXED_SECONDS = 0.2
# An image whose size ECR does not give is budgeted as a large one.
ASSUMED_IMAGE_BYTES = 3.5e9
# The most MaxConcurrency the settings' pattern (and SSM's 7 characters) allow.
MAX_PULLS_AT_ONCE = 999_999


def image_bytes(images: Sequence[ResolvedImage]) -> float:
    """What a node that holds none of these images downloads for them."""
    return float(sum(image.size_bytes if image.size_bytes else ASSUMED_IMAGE_BYTES for image in images))


def pull_seconds(images: Sequence[ResolvedImage]) -> float:
    """How long one node's run of a command with these images takes, by the rule's assumptions."""
    return len(images) * PULL_FIXED_SECONDS + image_bytes(images) / PULL_BYTES_PER_SECOND


def pulls_at_once(images: Sequence[ResolvedImage], settings: CommandSettings, *, share: float = 1.0) -> int:
    """How many nodes may run a command of these images at once within ``share`` of RegistryBandwidthGbps: the
    budget over what one node's run asks of it on average (its bytes over its time), at least 1."""
    one_node = image_bytes(images) / pull_seconds(images)
    budget = settings.registry_bytes_per_second * share
    return max(1, min(MAX_PULLS_AT_ONCE, math.floor(budget / one_node)))


def max_concurrency_for(images: Sequence[ResolvedImage], settings: CommandSettings, *, share: float = 1.0) -> str:
    """The command's MaxConcurrency: the user's, when set (a count or a percentage, as given), else
    ``pulls_at_once``. ``share``: the part of the budget this command may use, beside others sent with it."""
    return settings.max_concurrency or str(pulls_at_once(images, settings, share=share))


def document_parameters(images: Sequence[ResolvedImage], settings: CommandSettings) -> dict[str, list[str]]:
    """The document's parameters, every one explicit so that no default on the node decides behaviour. ``pushedAt``
    gives each image's push time, in the images' order: commands can reach a node out of order, and the node moves a
    tag, and keeps pins, by it (never by the order of the commands or the images' build times)."""
    return {
        "images": [",".join(image.reference for image in images)],
        "pushedAt": [",".join(str(push_time_ms(image.pushed_at)) for image in images)],
        "pin": ["true" if settings.pin_images else "false"],
        "keepPinned": [str(settings.pinned_versions_to_keep)],
        "maxDiskUsagePercent": [str(settings.max_disk_usage_percent)],
        "pullTimeoutSeconds": [str(settings.effective_pull_timeout_seconds)],
        "connections": [str(DEFAULT_CONNECTIONS)],
        "executionTimeout": [str(settings.execution_timeout_seconds)],
    }


def comment_for(
    images: Sequence[ResolvedImage],
    *,
    new_node: bool = False,
    launched: datetime | None = None,
    limit: int = _COMMENT_LIMIT,
) -> str:
    names = ", ".join(image.display_name for image in images)
    mark = ""
    if new_node:
        at = f" launched {launched.astimezone(UTC).strftime(_LAUNCH_FORMAT)}" if launched else ""
        mark = f"{NEW_NODE_COMMENT_PREFIX}{at}: "
    text = f"{mark}prefetch {names}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_new_node_comment(comment: str | None) -> bool:
    """Whether a command's Comment is that of the new-node path (see ``NEW_NODE_COMMENT_PREFIX``)."""
    return _NEW_NODE_COMMENT.match(comment or "") is not None


def launch_time_of(comment: str | None) -> datetime | None:
    """The instance's launch time a new-node command's Comment carries; None for any other command, or one sent
    before the Comment carried it."""
    match = _NEW_NODE_COMMENT.match(comment or "")
    if match is None or match.group(1) is None:
        return None
    return datetime.strptime(match.group(1), _LAUNCH_FORMAT).replace(tzinfo=UTC)


def with_comment_marker(request: Mapping[str, Any], marker: str) -> dict[str, Any]:
    """The request with ``marker`` at the end of its Comment (ListCommands shows it), the text shortened to fit."""
    suffix = f" [{marker}]"
    text = request.get("Comment", "")
    if len(text) + len(suffix) > _COMMENT_LIMIT:
        text = text[: _COMMENT_LIMIT - len(suffix) - 3] + "..."
    return {**request, "Comment": f"{text}{suffix}"}


def fleet_targets(settings: CommandSettings, repository: str | None = None) -> list[dict[str, Any]]:
    """Tag targets: SSM resolves the fleet itself, so a push costs one call whatever the cluster's size. The cluster
    tag, AND the repository's node selector (keys ANDed, values ORed: SSM's own semantics, at most 4 keys)."""
    targets = [{"Key": f"tag:{settings.node_tag_key}", "Values": [settings.node_tag_value]}]
    if repository is not None:
        selector = settings.selector_for(repository)
        targets += [{"Key": f"tag:{key}", "Values": list(values)} for key, values in sorted(selector.items())]
    return targets


def send_command_request(
    images: Sequence[ResolvedImage],
    settings: CommandSettings,
    *,
    instance_ids: Sequence[str] | None = None,
    new_node: bool = False,
    launched: datetime | None = None,
    budget_share: float = 1.0,
) -> dict[str, Any]:
    """Keyword arguments for ssm.send_command: the whole fleet by tag, or the named instances. ``new_node``: the
    new-node path's command to a node that just launched (at ``launched``), marked as such in its Comment.
    ``budget_share``: the part of the registry path's budget this command's pulls may use (``max_concurrency_for``).
    """
    if not images:
        raise ValueError("a prefetch command needs at least one image")
    if len(images) > MAX_IMAGES_PER_COMMAND:
        raise ValueError(f"a prefetch command takes at most {MAX_IMAGES_PER_COMMAND} images (see image_batches)")
    if new_node and not instance_ids:
        raise ValueError("the new-node path's command names its node")
    request: dict[str, Any] = {
        "DocumentName": settings.document_name,
        "DocumentVersion": settings.document_version,
        "Parameters": document_parameters(images, settings),
        "MaxConcurrency": max_concurrency_for(images, settings, share=budget_share),
        "MaxErrors": settings.max_errors,
        "TimeoutSeconds": settings.delivery_timeout_seconds,
        "Comment": comment_for(images, new_node=new_node, launched=launched),
        "CloudWatchOutputConfig": {
            "CloudWatchLogGroupName": settings.output_log_group,
            "CloudWatchOutputEnabled": True,
        },
    }
    if instance_ids:
        request["InstanceIds"] = list(instance_ids)
    else:
        repositories = {image.repository for image in images}
        if len(repositories) != 1:
            # Each repository may select other nodes: a fleet command carries one repository's images.
            raise ValueError("a command by tag targets the images of one repository")
        request["Targets"] = fleet_targets(settings, repositories.pop())
    return request


def image_batches(images: Sequence[ResolvedImage]) -> list[Sequence[ResolvedImage]]:
    """The images in as few commands' worth as the document allows."""
    return [images[start : start + MAX_IMAGES_PER_COMMAND] for start in range(0, len(images), MAX_IMAGES_PER_COMMAND)]
