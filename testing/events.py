"""The events the functions receive, in the shape EventBridge delivers them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from testing.environment import ACCOUNT, REGION

# What ECR says of an OCI image (the sample events/ecr_push/push-tagged.json).
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"


def event_envelope(
    source: str,
    detail_type: str,
    detail: dict[str, Any],
    resources: list[str] | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """An event in the shape EventBridge delivers it (a new id unless one is given)."""
    return {
        "version": "0",
        "id": event_id or str(uuid.uuid4()),
        "detail-type": detail_type,
        "source": source,
        "account": ACCOUNT,
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": REGION,
        "resources": list(resources or []),
        "detail": detail,
    }


def instance_arn(instance_id: str) -> str:
    return f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/{instance_id}"


def push_event(
    repository: str,
    digest: str,
    tag: str | None,
    event_id: str | None = None,
    *,
    manifest_media_type: str = OCI_MANIFEST,
    artifact_media_type: str = OCI_CONFIG,
) -> dict[str, Any]:
    """ECR's ``ECR Image Action`` for a successful push (without image-tag when the push had no tag)."""
    detail = {
        "result": "SUCCESS",
        "repository-name": repository,
        "image-digest": digest,
        "action-type": "PUSH",
        "image-tag": tag,
        "manifest-media-type": manifest_media_type,
        "artifact-media-type": artifact_media_type,
    }
    if tag is None:
        del detail["image-tag"]
    return event_envelope("aws.ecr", "ECR Image Action", detail, event_id=event_id)


def running_event(instance_id: str, *, state: str = "running", event_id: str | None = None) -> dict[str, Any]:
    """EC2's ``EC2 Instance State-change Notification``."""
    return event_envelope(
        "aws.ec2",
        "EC2 Instance State-change Notification",
        {"instance-id": instance_id, "state": state},
        [instance_arn(instance_id)],
        event_id,
    )


def status_event(
    command_id: str, instance_id: str, status: str, document: str, event_id: str = "e-1"
) -> dict[str, Any]:
    """SSM's ``EC2 Command Invocation Status-change Notification`` for one node's invocation."""
    detail = {
        "command-id": command_id,
        "document-name": document,
        "instance-id": instance_id,
        "requested-date-time": datetime.now(UTC).isoformat(),
        "status": status,
    }
    return event_envelope(
        "aws.ssm", "EC2 Command Invocation Status-change Notification", detail, [instance_arn(instance_id)], event_id
    )


def scheduled_event(rule: str = "status-sweep", event_id: str = "sweep-1") -> dict[str, Any]:
    """A schedule rule's ``Scheduled Event``."""
    return event_envelope(
        "aws.events", "Scheduled Event", {}, [f"arn:aws:events:{REGION}:{ACCOUNT}:rule/{rule}"], event_id
    )
