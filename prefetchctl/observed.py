"""What ``make preflight`` reads of a deployed stack and its account: the stack's deployment, and an ``Observed``
snapshot of the repositories, the tagged nodes (their tags and SSM registration), their instance profiles' policies
and their VPCs' endpoints, gathered with the ``aws`` adapters. A read the caller may not make is recorded as
unreadable, and the rest is still read."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from eks_prefetch import aws
from eks_prefetch.images import pick_newest
from eks_prefetch.node_contract import auto_mode_reason
from eks_prefetch.node_selectors import tags_of

NODE_POLICY_OUTPUT = "NodeRolePolicyArn"
LOG_GROUP_OUTPUT = "CommandOutputLogGroupName"


@dataclass(frozen=True)
class Deployment:
    """What the stack was deployed with (its parameters and outputs)."""

    stack: str
    region: str
    cluster: str
    repositories: tuple[str, ...]
    tag_filter: str
    node_tag_key: str
    node_tag_value: str
    node_policy_arn: str | None
    log_group: str | None = None
    node_selectors: str = ""  # RepositoryNodeSelectors, as given

    @property
    def partition(self) -> str:
        return (
            "aws-cn" if self.region.startswith("cn-") else "aws-us-gov" if self.region.startswith("us-gov-") else "aws"
        )

    @classmethod
    def of_stack(cls, stack: str, region: str, outputs: Mapping[str, str], parameters: Mapping[str, str]) -> Deployment:
        if "ClusterName" not in parameters or "RepositoryNames" not in parameters:
            raise LookupError(
                f"the stack {stack} has no ClusterName/RepositoryNames parameters: is it this application?"
            )
        cluster = parameters["ClusterName"]
        return cls(
            stack=stack,
            region=region,
            cluster=cluster,
            repositories=tuple(name.strip() for name in parameters["RepositoryNames"].split(",") if name.strip()),
            tag_filter=parameters.get("TagFilter") or r"^(?!sha256-).+$",
            node_tag_key=parameters.get("NodeTagKey") or "eks:cluster-name",
            node_tag_value=parameters.get("NodeTagValue") or cluster,
            node_policy_arn=outputs.get(NODE_POLICY_OUTPUT),
            log_group=outputs.get(LOG_GROUP_OUTPUT),
            node_selectors=parameters.get("RepositoryNodeSelectors") or "",
        )


@dataclass(frozen=True)
class Repository:
    name: str
    exists: bool
    newest_tag: str | None = None
    newest_bytes: int | None = None


@dataclass(frozen=True)
class Node:
    instance_id: str
    name: str  # the private DNS name: the Kubernetes node name on EKS
    profile_arn: str | None
    vpc_id: str | None
    ping_status: str | None  # None: SSM does not know it (never registered)
    last_ping: datetime | None = None
    # Why this application leaves the node out whatever its agent does (an EKS Auto Mode node), or None.
    left_out: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.name} ({self.instance_id})" if self.name else self.instance_id


@dataclass(frozen=True)
class Profile:
    arn: str
    exists: bool
    roles: tuple[str, ...] = ()
    attached: frozenset[str] = frozenset()  # the managed policies' ARNs
    inline: tuple[Mapping[str, Any], ...] = ()  # the roles' inline policy documents
    attached_documents: tuple[Mapping[str, Any], ...] = ()  # the attached policies' default versions
    unread: tuple[str, ...] = ()  # attached policies whose documents could not be read

    @property
    def documents(self) -> tuple[Mapping[str, Any], ...]:
        """Every policy document of the roles that was read: what they grant together."""
        return (*self.inline, *self.attached_documents)


@dataclass
class Observed:
    deployment: Deployment
    repositories: list[Repository] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    profiles: dict[str, Profile] = field(default_factory=dict)
    endpoints: dict[str, frozenset[str]] = field(default_factory=dict)  # VPC id -> endpoint service names
    unreadable: list[str] = field(default_factory=list)  # what could not be checked, and why
    nodes_read: bool = True  # False: the nodes could not be listed (none is known, not "none runs")

    @property
    def served_nodes(self) -> list[Node]:
        """The nodes this application can serve: those it leaves out whatever their agent does (EKS Auto Mode)
        excluded."""
        return [node for node in self.nodes if node.left_out is None]


def _denied(what: str, error: Exception) -> str:
    return f"{what}: {error}"


def _attached_documents(arns: list[str], observed: Observed) -> tuple[list[Mapping[str, Any]], list[str]]:
    """The documents of these managed policies (AWS's or the account's own), and those that could not be read."""
    documents, unread = [], []
    for arn in arns:
        try:
            document = aws.iam.policy_document(arn)
        except aws.AWS_ERRORS as error:
            observed.unreadable.append(
                _denied(f"the document of policy {arn} (iam:GetPolicy, iam:GetPolicyVersion)", error)
            )
            unread.append(arn)
            continue
        if document is not None:
            documents.append(document)
    return documents, unread


def observe(deployment: Deployment) -> Observed:
    """Everything the checks look at; a read the caller may not make is recorded as unreadable and the rest is still
    checked."""
    observed = Observed(deployment)
    pattern = re.compile(deployment.tag_filter)
    for name in deployment.repositories:
        try:
            details = aws.ecr.repository_images(name)
        except aws.AWS_ERRORS as error:
            observed.unreadable.append(_denied(f"repository {name} (ecr:DescribeImages)", error))
            continue
        if details is None:
            observed.repositories.append(Repository(name, exists=False))
            continue
        newest = pick_newest(details, pattern, deployment.region)
        size = next((d.get("imageSizeInBytes") for d in details if newest and d["imageDigest"] == newest.digest), None)
        observed.repositories.append(Repository(name, True, newest.tag if newest else None, size))

    try:
        instances = aws.ec2.running_instances(deployment.node_tag_key, deployment.node_tag_value)
        managed = {
            info["InstanceId"]: info
            for info in aws.ssm.managed_instances(deployment.node_tag_key, deployment.node_tag_value)
        }
    except aws.AWS_ERRORS as error:
        observed.unreadable.append(_denied("the nodes (ec2:DescribeInstances, ssm:DescribeInstanceInformation)", error))
        observed.nodes_read = False
        return observed
    for instance in instances:
        info = managed.get(instance["InstanceId"])
        observed.nodes.append(
            Node(
                instance_id=instance["InstanceId"],
                name=instance.get("PrivateDnsName") or "",
                profile_arn=(instance.get("IamInstanceProfile") or {}).get("Arn"),
                vpc_id=instance.get("VpcId"),
                ping_status=info.get("PingStatus") if info else None,
                last_ping=info.get("LastPingDateTime") if info else None,
                left_out=auto_mode_reason(instance),
                tags=tags_of(instance),
            )
        )

    for arn in sorted({node.profile_arn for node in observed.nodes if node.profile_arn}):
        try:
            policies = aws.iam.instance_profile_policies(arn)
        except aws.AWS_ERRORS as error:
            observed.unreadable.append(_denied(f"instance profile {arn} (iam:GetInstanceProfile, its roles)", error))
            continue
        if policies is None:
            observed.profiles[arn] = Profile(arn, False)
            continue
        roles, attached, inline = policies
        documents, unread = _attached_documents(sorted(attached), observed)
        observed.profiles[arn] = Profile(
            arn, True, tuple(roles), frozenset(attached), tuple(inline), tuple(documents), tuple(unread)
        )

    for vpc_id in sorted({node.vpc_id for node in observed.nodes if node.vpc_id}):
        try:
            observed.endpoints[vpc_id] = frozenset(aws.ec2.vpc_endpoint_services(vpc_id))
        except aws.AWS_ERRORS as error:
            observed.unreadable.append(_denied(f"endpoints of {vpc_id} (ec2:DescribeVpcEndpoints)", error))
    return observed
