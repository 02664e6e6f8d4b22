"""``make preflight STACK=<name>``: the deployed stack against what the account really holds, each finding with what
to do about it.

- each watched repository exists and holds an image whose tag matches the filter;
- the running instances carrying the node tag against what SSM reports online (nodes offline or never registered,
  and why when it can be told);
- the nodes' instance profiles carry the policies they need, attached or as inline policies (``node_role``);
- the nodes' VPCs have the ECR and S3 endpoints, or else what one push costs in NAT data processing.

Exit status: 0 ready, 1 findings, 2 the stack (or part of what is checked) cannot be read.

The checks are pure functions of an ``Observed`` snapshot; ``observe`` gathers it with the ``aws`` adapters.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO

from eks_prefetch import aws
from eks_prefetch.images import pick_newest
from prefetchctl.cli import stack_arguments
from prefetchctl.node_role import SSM_CORE, Grant, Need, attach_commands, describe, node_needs, unmet

READY, FINDINGS, UNREADABLE = 0, 1, 2
NODE_POLICY_OUTPUT = "NodeRolePolicyArn"
LOG_GROUP_OUTPUT = "CommandOutputLogGroupName"
# docs/scale.md: NAT gateway data processing, us-east-1 (most regions charge the same or more).
NAT_DOLLARS_PER_GB = 0.045
REGISTRY_ENDPOINTS = ("ecr.api", "ecr.dkr", "s3")
AGENT_ENDPOINTS = ("ssm", "ssmmessages", "ec2messages")
NODES_NAMED = 10  # nodes named per finding; the rest are counted


@dataclass(frozen=True)
class Finding:
    check: str  # repository | nodes | roles | network
    subject: str
    problem: str
    fix: str


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

    @property
    def label(self) -> str:
        return f"{self.name} ({self.instance_id})" if self.name else self.instance_id


@dataclass(frozen=True)
class Profile:
    arn: str
    exists: bool
    roles: tuple[str, ...] = ()
    attached: frozenset[str] = frozenset()
    inline: tuple[Mapping[str, Any], ...] = ()  # the roles' inline policy documents


@dataclass
class Observed:
    deployment: Deployment
    repositories: list[Repository] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    profiles: dict[str, Profile] = field(default_factory=dict)
    endpoints: dict[str, frozenset[str]] = field(default_factory=dict)  # VPC id -> endpoint service names
    unreadable: list[str] = field(default_factory=list)  # what could not be checked, and why


# --- The checks (pure) ----------------------------------------------------------------------------------------------


def check_repositories(observed: Observed) -> list[Finding]:
    deployment = observed.deployment
    findings = []
    for repository in observed.repositories:
        if not repository.exists:
            findings.append(
                Finding(
                    "repository",
                    repository.name,
                    f"no such ECR repository in {deployment.region} (this account): pushes to it never prefetch",
                    "correct the name (sam deploy --parameter-overrides RepositoryNames=...) or create the repository",
                )
            )
        elif repository.newest_tag is None:
            findings.append(
                Finding(
                    "repository",
                    repository.name,
                    f"no image has a tag matching TagFilter {deployment.tag_filter!r}: new nodes get nothing from it",
                    "push a tagged image, or correct TagFilter",
                )
            )
    return findings


def _names(nodes: Sequence[Node]) -> str:
    named = ", ".join(node.label for node in nodes[:NODES_NAMED])
    return named + (f" and {len(nodes) - NODES_NAMED} more" if len(nodes) > NODES_NAMED else "")


def _unmet_needs(profile: Profile, deployment: Deployment) -> dict[Need, tuple[Grant, ...]]:
    """The needs the profile's roles meet neither by an attached policy nor inline, with what the inline policies
    lack."""
    needs = node_needs(
        partition=deployment.partition,
        region=deployment.region,
        account=profile.arn.split(":")[4],
        repositories=deployment.repositories,
        node_policy=(NODE_POLICY_OUTPUT, deployment.node_policy_arn) if deployment.node_policy_arn else None,
        log_group=deployment.log_group,
    )
    found = {need: unmet(need, profile.attached, profile.inline) for need in needs}
    return {need: lacking for need, lacking in found.items() if lacking is not None}


def check_roles(observed: Observed) -> list[Finding]:
    deployment = observed.deployment
    findings = []
    without_profile = [node for node in observed.nodes if not node.profile_arn]
    if without_profile:
        findings.append(
            Finding(
                "roles",
                _names(without_profile),
                "no instance profile: the SSM agent cannot register, and the node cannot log in to ECR",
                "launch the nodes with the node group's (or EC2NodeClass's) role; see the README's prerequisites",
            )
        )
    by_profile: dict[str, list[Node]] = {}
    for node in observed.nodes:
        if node.profile_arn:
            by_profile.setdefault(node.profile_arn, []).append(node)
    for arn, nodes in sorted(by_profile.items()):
        profile = observed.profiles.get(arn)
        if profile is None:
            continue  # not read: listed as unreadable
        subject = f"instance profile {arn.rsplit('/', 1)[-1]} ({len(nodes)} node(s))"
        if not profile.exists or not profile.roles:
            findings.append(
                Finding("roles", subject, "the instance profile has no role", "add the node role to the profile")
            )
            continue
        missing = _unmet_needs(profile, deployment)
        if missing:
            problem = f"not attached: {', '.join(need.label for need in missing)}"
            lacking = describe(missing.values())
            if profile.inline and lacking:
                problem += f"; nor granted by its inline policies, which lack {lacking}"
            findings.append(
                Finding(
                    "roles",
                    f"role {', '.join(profile.roles)} ({len(nodes)} node(s), profile {arn.rsplit('/', 1)[-1]})",
                    problem,
                    attach_commands(profile.roles, missing, deployment.partition)
                    + " (or grant what is lacking in an inline policy of the role)",
                )
            )
    return findings


def _agent_reason(node: Node, observed: Observed) -> str:
    """Why SSM does not reach this node, as far as the account can tell."""
    deployment = observed.deployment
    profile = observed.profiles.get(node.profile_arn or "")
    if not node.profile_arn:
        return "it has no instance profile"
    if profile is not None and (not profile.exists or not profile.roles):
        return "its instance profile has no role"
    if profile is not None and any(need.label == SSM_CORE for need in _unmet_needs(profile, deployment)):
        return f"its instance profile lacks SSM permissions ({SSM_CORE} is not attached to its role, nor inline)"
    services = observed.endpoints.get(node.vpc_id or "")
    if services is not None:
        absent = [name for name in AGENT_ENDPOINTS if not _has_endpoint(services, name, deployment.region)]
        if absent:
            return (
                f"the agent is not running, or cannot reach SSM: {node.vpc_id} has no {', '.join(absent)} "
                "endpoint(s), so without a NAT route the agent cannot connect"
            )
    return "the agent is not running, or cannot reach SSM (security groups, proxy, DNS of the endpoints)"


def check_nodes(observed: Observed) -> list[Finding]:
    deployment = observed.deployment
    tag = f"{deployment.node_tag_key}={deployment.node_tag_value}"
    if not observed.nodes:
        return [
            Finding(
                "nodes",
                f"tag {tag}",
                "no running instance carries the node tag: every command finds no node",
                "check NodeTagKey/NodeTagValue against the nodes' tags (managed node groups: eks:cluster-name; "
                "Karpenter: eks:eks-cluster-name)",
            )
        ]
    groups: dict[tuple[str, str], list[Node]] = {}
    for node in observed.nodes:
        if node.ping_status == "Online":
            continue
        if node.ping_status is None:
            problem = f"SSM does not know these nodes (agent never registered): {_agent_reason(node, observed)}"
        else:
            since = f" since {node.last_ping.isoformat()}" if node.last_ping else ""
            problem = f"SSM agent {node.ping_status}{since}: {_agent_reason(node, observed)}"
        fix = (
            "fix the cause above, then check Fleet Manager shows the node Online; these nodes get no prefetch and "
            "are left out of every coverage figure until then"
        )
        groups.setdefault((problem, fix), []).append(node)
    return [Finding("nodes", _names(nodes), problem, fix) for (problem, fix), nodes in groups.items()]


def _has_endpoint(services: frozenset[str], name: str, region: str) -> bool:
    return any(service.endswith(f".{region}.{name}") for service in services)


def nat_cost_per_push(observed: Observed) -> list[tuple[str, float]]:
    """Per repository with a newest image: the NAT data processing of every running node pulling it whole."""
    nodes = len(observed.nodes)
    return [
        (f"{repository.name}:{repository.newest_tag}", repository.newest_bytes / 1e9 * nodes * NAT_DOLLARS_PER_GB)
        for repository in observed.repositories
        if repository.newest_bytes
    ]


def check_network(observed: Observed) -> list[Finding]:
    deployment = observed.deployment
    findings = []
    for vpc_id, services in sorted(observed.endpoints.items()):
        absent = [name for name in REGISTRY_ENDPOINTS if not _has_endpoint(services, name, deployment.region)]
        if not absent:
            continue
        costs = nat_cost_per_push(observed)
        if costs:
            figures = ", ".join(f"{image} ${dollars:,.2f}" for image, dollars in costs)
            cost = (
                f"; one push costs up to this in NAT data processing at {len(observed.nodes)} node(s) "
                f"(${NAT_DOLLARS_PER_GB}/GB, us-east-1; only layers a node lacks are pulled): {figures}"
            )
        else:
            cost = ""
        findings.append(
            Finding(
                "network",
                vpc_id,
                f"no {', '.join(absent)} endpoint(s): image layers go through the NAT gateway{cost}",
                "create the s3 gateway endpoint (free) on the nodes' route tables and ecr.api/ecr.dkr interface "
                "endpoints with private DNS (docs/scale.md)",
            )
        )
    return findings


def findings_of(observed: Observed) -> list[Finding]:
    return [
        *check_repositories(observed),
        *check_nodes(observed),
        *check_roles(observed),
        *check_network(observed),
    ]


def exit_code(findings: Sequence[Finding], unreadable: Sequence[str]) -> int:
    if unreadable:
        return UNREADABLE
    return FINDINGS if findings else READY


def render(observed: Observed, findings: Sequence[Finding], out: TextIO) -> None:
    deployment = observed.deployment
    head = f"preflight of stack {deployment.stack} (cluster {deployment.cluster}, {deployment.region})"
    if not findings and not observed.unreadable:
        online = sum(node.ping_status == "Online" for node in observed.nodes)
        out.write(
            f"{head}: ready\n"
            f"  {len(observed.repositories)} repositories with a matching image; {online} running node(s), all online "
            f"with the policies they need; ECR and S3 endpoints in {', '.join(sorted(observed.endpoints)) or '-'}\n"
        )
        return
    out.write(f"{head}: {len(findings)} finding(s)\n")
    for finding in findings:
        out.write(f"\n[{finding.check}] {finding.subject}\n  problem: {finding.problem}\n  do:      {finding.fix}\n")
    for what in observed.unreadable:
        out.write(f"\nnot checked: {what}\n")


# --- Gathering (through the adapters) -------------------------------------------------------------------------------


def _denied(what: str, error: Exception) -> str:
    return f"{what}: {error}"


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
        else:
            roles, attached, inline = policies
            observed.profiles[arn] = Profile(arn, True, tuple(roles), frozenset(attached), tuple(inline))

    for vpc_id in sorted({node.vpc_id for node in observed.nodes if node.vpc_id}):
        try:
            observed.endpoints[vpc_id] = frozenset(aws.ec2.vpc_endpoint_services(vpc_id))
        except aws.AWS_ERRORS as error:
            observed.unreadable.append(_denied(f"endpoints of {vpc_id} (ec2:DescribeVpcEndpoints)", error))
    return observed


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    args = stack_arguments("make preflight", __doc__.splitlines()[0], argv, err)
    if args is None:
        return UNREADABLE
    try:
        region = aws.client("cloudformation").meta.region_name
        outputs, parameters = aws.stack.describe_stack(args.stack)
        deployment = Deployment.of_stack(args.stack, region, outputs, parameters)
        observed = observe(deployment)
    except (LookupError, *aws.AWS_ERRORS) as error:
        err.write(f"cannot read the stack {args.stack}: {error}\n")
        return UNREADABLE
    findings = findings_of(observed)
    render(observed, findings, out)
    return exit_code(findings, observed.unreadable)
