"""Instances in moto's EC2, with the node tag and the launch time a test chooses."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import boto3
from moto.ec2.models import ec2_backends

from testing.environment import ACCOUNT, CLUSTER, REGION

NODE_TAGS = {"eks:cluster-name": CLUSTER}


def run_nodes(count: int, tags: Mapping[str, str] | None = None, instance_type: str | None = None) -> list[str]:
    """``count`` running instances with ``tags`` (default: the node tag; {}: none), in as few RunInstances calls as
    moto allows."""
    tags = NODE_TAGS if tags is None else tags
    ec2 = boto3.client("ec2")
    ids: list[str] = []
    while len(ids) < count:
        batch = min(count - len(ids), 1000)
        kwargs: dict[str, Any] = {"ImageId": "ami-12c6146b", "MinCount": batch, "MaxCount": batch}
        if instance_type:
            kwargs["InstanceType"] = instance_type
        if tags:
            kwargs["TagSpecifications"] = [
                {"ResourceType": "instance", "Tags": [{"Key": key, "Value": value} for key, value in tags.items()]}
            ]
        ids += [instance["InstanceId"] for instance in ec2.run_instances(**kwargs)["Instances"]]
    return ids


def run_instance(tags: Mapping[str, str] | None = None, launched: datetime | None = None) -> str:
    """One m7g.large instance with ``tags`` (None: none), launched at ``launched`` if given."""
    (instance_id,) = run_nodes(1, tags or {}, instance_type="m7g.large")
    if launched is not None:
        set_launch_time(instance_id, launched)
    return instance_id


def set_launch_time(instance_id: str, launched: datetime) -> None:
    """moto stamps "now" on launch and keeps LaunchTime on stop/start; set it as EC2 would."""
    instance = ec2_backends[ACCOUNT][REGION].get_instance(instance_id)
    instance.launch_time = launched.astimezone(UTC).replace(tzinfo=None)


def launch_time_of(instance_id: str) -> str:
    (reservation,) = boto3.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"]
    return reservation["Instances"][0]["LaunchTime"].isoformat()
