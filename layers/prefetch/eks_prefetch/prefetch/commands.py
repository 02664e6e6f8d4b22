"""The SendCommand request for a prefetch: one implementation for every path that sends one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from eks_prefetch.images import ResolvedImage
from eks_prefetch.node_contract import DEFAULT_CONNECTIONS, MAX_IMAGES_PER_COMMAND, push_time_ms
from eks_prefetch.settings import CommandSettings

# SSM's limit on a command's Comment.
_COMMENT_LIMIT = 100
# The new-node path's commands open their Comment with this. GetCommandInvocation returns the Comment, so the status
# function tells from the invocation alone that a report answers a launch (LaunchToCachedSeconds is measured from
# those only). At the start, because shortening cuts the end and the event marker is appended there.
NEW_NODE_COMMENT_PREFIX = "new node: "


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


def comment_for(images: Sequence[ResolvedImage], *, new_node: bool = False, limit: int = _COMMENT_LIMIT) -> str:
    names = ", ".join(image.display_name for image in images)
    text = f"{NEW_NODE_COMMENT_PREFIX if new_node else ''}prefetch {names}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_new_node_comment(comment: str | None) -> bool:
    """Whether a command's Comment is that of the new-node path (see ``NEW_NODE_COMMENT_PREFIX``)."""
    return (comment or "").startswith(NEW_NODE_COMMENT_PREFIX)


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
) -> dict[str, Any]:
    """Keyword arguments for ssm.send_command: the whole fleet by tag, or the named instances. ``new_node``: the
    new-node path's command to a node that just launched, marked as such in its Comment."""
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
        "MaxConcurrency": settings.max_concurrency,
        "MaxErrors": settings.max_errors,
        "TimeoutSeconds": settings.delivery_timeout_seconds,
        "Comment": comment_for(images, new_node=new_node),
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
