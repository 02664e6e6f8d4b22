"""Uninstall: remove this application's pins from the cluster's nodes.

The prefetch script labels every image it pins ``eks-image-prefetch/pinned-at`` (and never pins over someone else's
pin), so the unpin document removes the pin of exactly those images. The images stay; kubelet's image GC reclaims
them when it needs the space.

Two ways in, one request: the stack's custom resource on deletion (``functions/unpin``), and ``make unpin STACK=``
(``python -m prefetchctl unpin``, prefetchctl/unpin.py) on demand.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from eks_prefetch.settings import EnvironmentSettings

# The command's Comment (ListCommands shows it): what sent it.
COMMENT = "eks-image-prefetch uninstall: remove this application's pins"
# Unpinning is local to each node (no registry traffic), so every node at once; a failing node stops nobody else.
MAX_CONCURRENCY = "100%"
MAX_ERRORS = "100%"
# How long SSM keeps trying to reach a node that is not reachable at deletion time.
DELIVERY_TIMEOUT_SECONDS = 600


class UnpinTarget(EnvironmentSettings):
    """Which document to send and to which nodes: the unpin function's settings (its environment), or the deployed
    stack's (``make unpin``)."""

    document_name: str = Field(alias="UNPIN_DOCUMENT_NAME", min_length=3, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")
    node_tag_key: str = Field(alias="NODE_TAG_KEY", min_length=1, max_length=128)
    node_tag_value: str = Field(alias="NODE_TAG_VALUE", min_length=1, max_length=256)


def unpin_request(target: UnpinTarget) -> dict[str, Any]:
    """The one SendCommand request: by tag, so every managed node of the cluster, whatever its number. The document
    takes no parameters: nothing from outside reaches the script."""
    return {
        "DocumentName": target.document_name,
        "Targets": [{"Key": f"tag:{target.node_tag_key}", "Values": [target.node_tag_value]}],
        "MaxConcurrency": MAX_CONCURRENCY,
        "MaxErrors": MAX_ERRORS,
        "TimeoutSeconds": DELIVERY_TIMEOUT_SECONDS,
        "Comment": COMMENT,
    }


@dataclass(frozen=True)
class CustomResourceOutcome:
    """What the custom resource reports: always SUCCESS, so that uninstalling is never blocked by the unpin."""

    physical_resource_id: str
    reason: str
    command_id: str | None = None
    status: Literal["SUCCESS"] = "SUCCESS"

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "reason": self.reason, "command_id": self.command_id}

    @property
    def data(self) -> dict[str, str]:
        """The custom resource's attributes: the unpin command sent, if any."""
        return {"CommandId": self.command_id or ""}


def physical_resource_id(stack_id: str, logical_resource_id: str) -> str:
    """Stable across updates: a changed id would make CloudFormation delete the "old" resource, which unpins."""
    stack_name = stack_id.split("/")[1] if stack_id.count("/") >= 2 else stack_id
    return f"{stack_name}-{logical_resource_id}"[:200]


def on_custom_resource(
    request_type: str,
    physical_id: str | None,
    stack_id: str,
    logical_resource_id: str,
    target: Callable[[], UnpinTarget],
    send: Callable[[Mapping[str, Any]], str],
) -> CustomResourceOutcome:
    """Create and Update: nothing. Delete: one unpin command; a failure to build or send it is reported as the
    reason, never as a failure."""
    resource_id = physical_id or physical_resource_id(stack_id, logical_resource_id)
    if request_type != "Delete":
        return CustomResourceOutcome(resource_id, f"{request_type}: nothing to do until the stack is deleted")
    try:
        command_id = send(unpin_request(target()))
    except Exception as error:  # best effort: whatever failed, the deletion goes on
        why = f"{type(error).__name__}: {str(error)[:300]}"
        return CustomResourceOutcome(resource_id, f"unpin command not sent ({why})")
    return CustomResourceOutcome(resource_id, f"unpin command {command_id} sent", command_id)
