"""IAM: what a node's instance profile carries, and what its policies say (for `make preflight`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from botocore.exceptions import ClientError

from eks_prefetch.aws import clients
from eks_prefetch.aws.clients import error_code


def instance_profile_policies(
    profile_arn: str, iam: Any = None
) -> tuple[list[str], set[str], list[Mapping[str, Any]]] | None:
    """The roles of an instance profile, the managed policies attached to them (ARNs) and their inline policy
    documents; None if the profile does not exist."""
    iam = iam or clients.client("iam")
    try:
        profile = iam.get_instance_profile(InstanceProfileName=profile_arn.rsplit("/", 1)[-1])["InstanceProfile"]
    except ClientError as error:
        if error_code(error) == "NoSuchEntity":
            return None
        raise
    roles = [role["RoleName"] for role in profile.get("Roles", [])]
    attached: set[str] = set()
    inline: list[Mapping[str, Any]] = []
    for role in roles:
        for page in iam.get_paginator("list_attached_role_policies").paginate(RoleName=role):
            attached.update(policy["PolicyArn"] for policy in page["AttachedPolicies"])
        for page in iam.get_paginator("list_role_policies").paginate(RoleName=role):
            for name in page["PolicyNames"]:
                document = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
                inline.append(_document(document))
    return roles, attached, inline


def _document(document: Any) -> Mapping[str, Any]:
    """A policy document as a mapping: boto3 decodes it, but IAM's own answer is URL-encoded JSON."""
    if isinstance(document, Mapping):
        return document
    return json.loads(unquote(document))


def policy_document(policy_arn: str, iam: Any = None) -> Mapping[str, Any] | None:
    """The document of a managed policy's default version (AWS's or the account's own); None if there is no such
    policy."""
    iam = iam or clients.client("iam")
    try:
        version = iam.get_policy(PolicyArn=policy_arn)["Policy"]["DefaultVersionId"]
        document = iam.get_policy_version(PolicyArn=policy_arn, VersionId=version)["PolicyVersion"]["Document"]
    except ClientError as error:
        if error_code(error) == "NoSuchEntity":
            return None
        raise
    return _document(document)
