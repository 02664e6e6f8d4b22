"""Adapters for the operator's features (uninstall, preflight): boto3 and the CloudFormation response, nothing else.

To be folded into the ``aws`` package (iam, cloudformation, ec2, ssm); clients come from ``aws.client`` (one retry
and deadline policy).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Mapping
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from eks_prefetch import aws

RESPONSE_TIMEOUT_SECONDS = 10
RESPONSE_ATTEMPTS = 3


def put_custom_resource_response(url: str, body: Mapping[str, Any], attempts: int = RESPONSE_ATTEMPTS) -> int:
    """PUT the answer to a custom resource request to its pre-signed URL (as cfn-response does); the HTTP status.
    Retried a few times: an answer that never arrives holds the stack operation until ServiceTimeout."""
    data = json.dumps(body).encode()
    last: Exception | None = None
    for _ in range(attempts):
        # The pre-signed S3 URL is signed for an empty content type.
        request = urllib.request.Request(  # noqa: S310 - the URL is CloudFormation's https pre-signed URL
            url, data=data, method="PUT", headers={"Content-Type": "", "Content-Length": str(len(data))}
        )
        try:
            with urllib.request.urlopen(request, timeout=RESPONSE_TIMEOUT_SECONDS) as response:  # noqa: S310
                return int(response.status)
        except OSError as error:
            last = error
    raise ConnectionError(f"custom resource response not delivered after {attempts} attempts: {last}")


def describe_stack(stack_name: str, cloudformation: Any = None) -> tuple[dict[str, str], dict[str, str]]:
    """A deployed stack's outputs and parameters."""
    (stack,) = (cloudformation or aws.client("cloudformation")).describe_stacks(StackName=stack_name)["Stacks"]
    outputs = {output["OutputKey"]: output["OutputValue"] for output in stack.get("Outputs", [])}
    parameters = {
        p["ParameterKey"]: p.get("ResolvedValue", p.get("ParameterValue", "")) for p in stack.get("Parameters", [])
    }
    return outputs, parameters


# --- make preflight: what the deployed stack meets in the account -------------------------------------------------


def repository_images(repository: str, ecr: Any = None) -> list[Mapping[str, Any]] | None:
    """Every tagged image of a repository, or None if the repository does not exist."""
    try:
        return list(aws.ecr.describe_tagged_images(repository, ecr=ecr))
    except aws.RepositoryNotFoundError:
        return None


def running_instances(tag_key: str, tag_value: str, ec2: Any = None) -> list[Mapping[str, Any]]:
    """Running EC2 instances carrying the node tag."""
    paginator = (ec2 or aws.client("ec2")).get_paginator("describe_instances")
    pages = paginator.paginate(
        Filters=[
            {"Name": f"tag:{tag_key}", "Values": [tag_value]},
            {"Name": "instance-state-name", "Values": ["running"]},
        ]
    )
    return [instance for page in pages for reservation in page["Reservations"] for instance in reservation["Instances"]]


def managed_instances(tag_key: str, tag_value: str, ssm: Any = None) -> list[Mapping[str, Any]]:
    """Managed nodes SSM knows with the node tag, whatever their PingStatus (Online, ConnectionLost, Inactive)."""
    paginator = (ssm or aws.client("ssm")).get_paginator("describe_instance_information")
    pages = paginator.paginate(
        Filters=[{"Key": f"tag:{tag_key}", "Values": [tag_value]}], PaginationConfig={"PageSize": 50}
    )
    return [info for page in pages for info in page["InstanceInformationList"]]


def instance_profile_policies(profile_arn: str, iam: Any = None) -> tuple[list[str], set[str]] | None:
    """The roles of an instance profile and the managed policies attached to them, or None if it does not exist."""
    iam = iam or aws.client("iam")
    try:
        profile = iam.get_instance_profile(InstanceProfileName=profile_arn.rsplit("/", 1)[-1])["InstanceProfile"]
    except ClientError as error:
        if aws.clients.error_code(error) == "NoSuchEntity":
            return None
        raise
    roles = [role["RoleName"] for role in profile.get("Roles", [])]
    attached: set[str] = set()
    for role in roles:
        for page in iam.get_paginator("list_attached_role_policies").paginate(RoleName=role):
            attached.update(policy["PolicyArn"] for policy in page["AttachedPolicies"])
    return roles, attached


def vpc_endpoint_services(vpc_id: str, ec2: Any = None) -> set[str]:
    """The service names of the VPC's endpoints that are (or are becoming) usable."""
    paginator = (ec2 or aws.client("ec2")).get_paginator("describe_vpc_endpoints")
    pages = paginator.paginate(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])
    return {
        endpoint["ServiceName"]
        for page in pages
        for endpoint in page["VpcEndpoints"]
        if endpoint.get("State", "available").lower() in {"available", "pending", "pendingacceptance"}
    }


# --- The operator's commands: what is missing before any call ------------------------------------------------------


def session_problem() -> str | None:
    """Why no AWS call can be made from this shell (no region, no credentials), in the operator's words, or None.

    Checked before the first call, so the message names the cause rather than the last link of botocore's credential
    chain (the instance metadata lookup, which behind a proxy fails with a proxy error)."""
    session = boto3.Session()
    if not session.region_name:
        return "no region (set REGION=<the stack's region>)"
    try:
        credentials = session.get_credentials()
    except BotoCoreError as error:
        return f"no AWS credentials (the last place looked, failed: {error})"
    if credentials is None:
        return "no AWS credentials: configure them (aws configure, AWS_PROFILE=<profile>, or aws sso login)"
    return None


def private_dns_names(instance_ids: list[str]) -> dict[str, str]:
    """Instance id -> private DNS name, the name EKS gives the node in Kubernetes (empty if EC2 has none)."""
    if not instance_ids:
        return {}
    return {
        instance_id: instance.get("PrivateDnsName") or ""
        for instance_id, instance in aws.ec2.describe_instances(instance_ids).items()
    }
