"""IAM: what a node's instance profile carries (for `make preflight`)."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from eks_prefetch.aws import clients
from eks_prefetch.aws.clients import error_code


def instance_profile_policies(profile_arn: str, iam: Any = None) -> tuple[list[str], set[str]] | None:
    """The roles of an instance profile and the managed policies attached to them, or None if it does not exist."""
    iam = iam or clients.client("iam")
    try:
        profile = iam.get_instance_profile(InstanceProfileName=profile_arn.rsplit("/", 1)[-1])["InstanceProfile"]
    except ClientError as error:
        if error_code(error) == "NoSuchEntity":
            return None
        raise
    roles = [role["RoleName"] for role in profile.get("Roles", [])]
    attached: set[str] = set()
    for role in roles:
        for page in iam.get_paginator("list_attached_role_policies").paginate(RoleName=role):
            attached.update(policy["PolicyArn"] for policy in page["AttachedPolicies"])
    return roles, attached
