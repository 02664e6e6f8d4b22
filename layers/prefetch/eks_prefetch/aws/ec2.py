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
    return _instances_with_tag(tag_key, tag_value, ["running"], ec2)


def _instances_with_tag(tag_key: str, tag_value: str, states: list[str], ec2: Any = None) -> list[Mapping[str, Any]]:
    paginator = (ec2 or clients.client("ec2")).get_paginator("describe_instances")
    pages = paginator.paginate(
        Filters=[
            {"Name": f"tag:{tag_key}", "Values": [tag_value]},
            {"Name": "instance-state-name", "Values": states},
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


# --- Warm boot volumes (docs/warm-volumes.md): the planner's AMI, snapshots, launch template and builders ---------


def describe_image(image_id: str, ec2: Any = None) -> Mapping[str, Any] | None:
    """The AMI as DescribeImages shows it (Architecture, ...), or None if EC2 does not know it (any more)."""
    try:
        images = (ec2 or clients.client("ec2")).describe_images(ImageIds=[image_id])["Images"]
    except ClientError as error:
        if error_code(error) in {"InvalidAMIID.NotFound", "InvalidAMIID.Unavailable", "InvalidAMIID.Malformed"}:
            return None
        raise
    return images[0] if images else None


def tagged_snapshots(tag_key: str, tag_value: str, ec2: Any = None) -> list[Mapping[str, Any]]:
    """This account's snapshots carrying the tag, in any state."""
    paginator = (ec2 or clients.client("ec2")).get_paginator("describe_snapshots")
    pages = paginator.paginate(OwnerIds=["self"], Filters=[{"Name": f"tag:{tag_key}", "Values": [tag_value]}])
    return [snapshot for page in pages for snapshot in page["Snapshots"]]


def launch_template_versions(launch_template_id: str, ec2: Any = None) -> list[Mapping[str, Any]]:
    """Every version of the launch template (no Versions argument: not just $Latest and $Default)."""
    paginator = (ec2 or clients.client("ec2")).get_paginator("describe_launch_template_versions")
    pages = paginator.paginate(LaunchTemplateId=launch_template_id)
    return [version for page in pages for version in page["LaunchTemplateVersions"]]


def snapshot_ids(version: Mapping[str, Any]) -> set[str]:
    """The snapshots a launch template version names in its block device mappings."""
    return {
        snapshot_id
        for mapping in version.get("LaunchTemplateData", {}).get("BlockDeviceMappings", [])
        if (snapshot_id := mapping.get("Ebs", {}).get("SnapshotId"))
    }


def launch_template_snapshot_ids(launch_template_id: str, ec2: Any = None) -> set[str]:
    """Every snapshot id any version of the launch template names in its block device mappings."""
    return {
        snapshot for version in launch_template_versions(launch_template_id, ec2) for snapshot in snapshot_ids(version)
    }


def snapshots_named_by_launch_templates(ec2: Any = None) -> set[str]:
    """Every snapshot id any version of any launch template of the account and Region names: the user's own, a
    managed node group's copy, Karpenter's. One call per template and page: read only when something may go."""
    ec2 = ec2 or clients.client("ec2")
    pages = ec2.get_paginator("describe_launch_templates").paginate()
    templates = [template["LaunchTemplateId"] for page in pages for template in page["LaunchTemplates"]]
    return {snapshot for template in templates for snapshot in launch_template_snapshot_ids(template, ec2)}


def delete_launch_template_versions(launch_template_id: str, versions: list[int], ec2: Any = None) -> list[int]:
    """Delete these versions (never the default: EC2 refuses it); the ones deleted. At most 200 per call."""
    ec2 = ec2 or clients.client("ec2")
    deleted: list[int] = []
    for start in range(0, len(versions), 200):
        answer = ec2.delete_launch_template_versions(
            LaunchTemplateId=launch_template_id, Versions=[str(v) for v in versions[start : start + 200]]
        )
        deleted += [int(v["VersionNumber"]) for v in answer.get("SuccessfullyDeletedLaunchTemplateVersions", [])]
    return deleted


# Fast snapshot restore states that cost money (everything but disabling/disabled).
_FSR_BILLED_STATES = ["enabling", "optimizing", "enabled"]


def fast_snapshot_restore_zones(snapshot_ids: list[str], ec2: Any = None) -> dict[str, set[str]]:
    """Snapshot id -> the availability zones where fast snapshot restore is on (or turning on) for it."""
    if not snapshot_ids:
        return {}
    paginator = (ec2 or clients.client("ec2")).get_paginator("describe_fast_snapshot_restores")
    pages = paginator.paginate(
        Filters=[{"Name": "snapshot-id", "Values": snapshot_ids}, {"Name": "state", "Values": _FSR_BILLED_STATES}]
    )
    zones: dict[str, set[str]] = {}
    for page in pages:
        for restore in page["FastSnapshotRestores"]:
            if restore.get("State") in _FSR_BILLED_STATES:
                zones.setdefault(restore["SnapshotId"], set()).add(restore["AvailabilityZone"])
    return zones


def disable_fast_snapshot_restores(snapshot_id: str, zones: set[str], ec2: Any = None) -> None:
    (ec2 or clients.client("ec2")).disable_fast_snapshot_restores(
        AvailabilityZones=sorted(zones), SourceSnapshotIds=[snapshot_id]
    )


def delete_snapshot(snapshot_id: str, ec2: Any = None) -> bool:
    """Delete a snapshot; False if EC2 refuses because something uses it (an AMI, a volume being created from it),
    True once it is gone (already gone included)."""
    try:
        (ec2 or clients.client("ec2")).delete_snapshot(SnapshotId=snapshot_id)
    except ClientError as error:
        if error_code(error) == "InvalidSnapshot.NotFound":
            return True
        if error_code(error) == "InvalidSnapshot.InUse":
            return False
        raise
    return True


def tagged_instances(tag_key: str, tag_value: str, ec2: Any = None) -> list[Mapping[str, Any]]:
    """Instances carrying the tag that are not (being) terminated."""
    return _instances_with_tag(tag_key, tag_value, ["pending", "running", "stopping", "stopped"], ec2)


def terminate_instances(instance_ids: list[str], ec2: Any = None) -> None:
    if instance_ids:
        (ec2 or clients.client("ec2")).terminate_instances(InstanceIds=instance_ids)
