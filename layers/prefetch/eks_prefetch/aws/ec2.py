"""EC2: what an instance is (tags, state, launch time)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from botocore.exceptions import ClientError

from eks_prefetch.aws import clients
from eks_prefetch.aws.clients import error_code


def describe_instance(instance_id: str, ec2: Any = None) -> Mapping[str, Any] | None:
    """The instance as DescribeInstances shows it, or None if EC2 does not know it (InvalidInstanceID.NotFound)."""
    try:
        response = (ec2 or clients.client("ec2")).describe_instances(InstanceIds=[instance_id])
    except ClientError as error:
        if error_code(error) == "InvalidInstanceID.NotFound":
            return None
        raise
    instances = [instance for reservation in response["Reservations"] for instance in reservation["Instances"]]
    return instances[0] if instances else None


def describe_instances(instance_ids: list[str], ec2: Any = None) -> dict[str, Mapping[str, Any]]:
    """The instances EC2 knows among these ids, by id, in one call per 200 ids. A filter, not InstanceIds, so that
    an unknown id is left out instead of failing the call."""
    found: dict[str, Mapping[str, Any]] = {}
    paginator = (ec2 or clients.client("ec2")).get_paginator("describe_instances")
    for start in range(0, len(instance_ids), 200):
        pages = paginator.paginate(Filters=[{"Name": "instance-id", "Values": instance_ids[start : start + 200]}])
        for page in pages:
            for reservation in page["Reservations"]:
                for instance in reservation["Instances"]:
                    found[instance["InstanceId"]] = instance
    return found


def running_instances(tag_key: str, tag_value: str, ec2: Any = None) -> list[Mapping[str, Any]]:
    """Running EC2 instances carrying the node tag."""
    paginator = (ec2 or clients.client("ec2")).get_paginator("describe_instances")
    pages = paginator.paginate(
        Filters=[
            {"Name": f"tag:{tag_key}", "Values": [tag_value]},
            {"Name": "instance-state-name", "Values": ["running"]},
        ]
    )
    return [instance for page in pages for reservation in page["Reservations"] for instance in reservation["Instances"]]


def vpc_endpoint_services(vpc_id: str, ec2: Any = None) -> set[str]:
    """The service names of the VPC's endpoints that are (or are becoming) usable."""
    paginator = (ec2 or clients.client("ec2")).get_paginator("describe_vpc_endpoints")
    pages = paginator.paginate(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])
    return {
        endpoint["ServiceName"]
        for page in pages
        for endpoint in page["VpcEndpoints"]
        if endpoint.get("State", "available").lower() in {"available", "pending", "pendingacceptance"}
    }


def private_dns_names(instance_ids: list[str]) -> dict[str, str]:
    """Instance id -> private DNS name, the name EKS gives the node in Kubernetes (empty if EC2 has none)."""
    if not instance_ids:
        return {}
    return {
        instance_id: instance.get("PrivateDnsName") or ""
        for instance_id, instance in describe_instances(instance_ids).items()
    }
