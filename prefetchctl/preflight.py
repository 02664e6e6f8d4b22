"""``make preflight STACK=<name>``: the deployed stack against what the account really holds, each finding with what
to do about it.

- each watched repository exists and holds an image whose tag matches the filter;
- each repository's node selector (``RepositoryNodeSelectors``) is one the functions accept and matches a running node
  (each repository's count of matching nodes is printed);
- the running instances carrying the node tag against what SSM reports online (nodes offline or never registered,
  and why when it can be told); EKS Auto Mode nodes, which allow no SSM, are named as left out, not as findings;
- the nodes' instance profiles carry the policies they need, or policies (attached or inline, AWS managed or the
  account's own) that grant the same (``node_role``);
- the nodes' VPCs have the ECR and S3 endpoints, or else what one push costs in NAT data processing.

Exit status: 0 ready, 1 findings, 2 the stack (or part of what is checked) cannot be read.

The checks are pure functions of an ``Observed`` snapshot; ``observed.observe`` gathers it with the ``aws`` adapters.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from eks_prefetch import aws
from eks_prefetch.node_selectors import Selector, SelectorError, matches, parse_node_selectors
from prefetchctl.cli import stack_arguments
from prefetchctl.node_role import SSM_CORE, Grant, Need, attach_commands, describe, node_needs, unmet
from prefetchctl.observed import NODE_POLICY_OUTPUT, Deployment, Node, Observed, Profile, observe

READY, FINDINGS, UNREADABLE = 0, 1, 2
# docs/scale.md: NAT gateway data processing, us-east-1 (most regions charge the same or more).
NAT_DOLLARS_PER_GB = 0.045
REGISTRY_ENDPOINTS = ("ecr.api", "ecr.dkr", "s3")
AGENT_ENDPOINTS = ("ssm", "ssmmessages", "ec2messages")
NODES_NAMED = 10  # nodes named per finding; the rest are counted


@dataclass(frozen=True)
class Finding:
    check: str  # repository | selectors | nodes | roles | network
    subject: str
    problem: str
    fix: str


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


def _selectors(deployment: Deployment) -> tuple[dict[str, dict[str, tuple[str, ...]]], str | None]:
    """The deployment's node selectors by repository (the functions' own parser), or why they cannot be used."""
    try:
        return parse_node_selectors(deployment.node_selectors, deployment.repositories, deployment.node_tag_key), None
    except SelectorError as error:
        return {}, str(error)


def _condition(selector: Selector) -> str:
    return ", ".join(f"{key}={'|'.join(values)}" for key, values in selector.items()) or "every node"


def nodes_per_repository(observed: Observed) -> list[tuple[str, int, Selector]]:
    """Each watched repository, the running nodes its selector matches (all of them without one; not those left out,
    as EKS Auto Mode nodes), and its selector."""
    selectors, _problem = _selectors(observed.deployment)
    return [
        (
            name,
            sum(matches(selectors.get(name, {}), node.tags) for node in observed.served_nodes),
            selectors.get(name, {}),
        )
        for name in observed.deployment.repositories
    ]


def _tags_seen(selector: Selector, nodes: Sequence[Node]) -> str:
    """The values the running nodes have for the selector's keys (what a typo is told apart by)."""
    seen = []
    for key in selector:
        values = sorted({node.tags[key] for node in nodes if key in node.tags})
        if not values:
            seen.append(f"no {key} tag")
        else:
            more = f" and {len(values) - NODES_NAMED} more" if len(values) > NODES_NAMED else ""
            seen.append(f"{key}={'|'.join(values[:NODES_NAMED])}{more}")
    return ", ".join(seen)


def check_selectors(observed: Observed) -> list[Finding]:
    problem = _selectors(observed.deployment)[1]
    if problem:
        return [
            Finding(
                "selectors",
                "RepositoryNodeSelectors",
                problem,
                "correct it (sam deploy --parameter-overrides RepositoryNodeSelectors=...): the functions cannot load "
                "their settings until then",
            )
        ]
    if not observed.nodes:
        return []  # no node carries the node tag (check_nodes says so), or they could not be read
    return [
        Finding(
            "selectors",
            name,
            f"RepositoryNodeSelectors selects no running node of the cluster ({_condition(selector)}): its images are "
            f"prefetched nowhere; the running nodes have {_tags_seen(selector, observed.nodes)}",
            "correct the selector to the nodes' tags (sam deploy --parameter-overrides RepositoryNodeSelectors=...), "
            f"or remove it to prefetch {name} on every node",
        )
        for name, count, selector in nodes_per_repository(observed)
        if selector and count == 0
    ]


def _names(nodes: Sequence[Node]) -> str:
    named = ", ".join(node.label for node in nodes[:NODES_NAMED])
    return named + (f" and {len(nodes) - NODES_NAMED} more" if len(nodes) > NODES_NAMED else "")


def _unmet_needs(profile: Profile, deployment: Deployment) -> dict[Need, tuple[Grant, ...]]:
    """The needs the profile's roles meet neither by an attached policy nor by what their policies grant, with what
    they lack."""
    needs = node_needs(
        partition=deployment.partition,
        region=deployment.region,
        account=profile.arn.split(":")[4],
        repositories=deployment.repositories,
        node_policy=(NODE_POLICY_OUTPUT, deployment.node_policy_arn) if deployment.node_policy_arn else None,
        log_group=deployment.log_group,
    )
    found = {need: unmet(need, profile.attached, profile.documents) for need in needs}
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
            if profile.documents and lacking:
                problem += f"; nor granted by its other policies (attached and inline), which lack {lacking}"
            if profile.unread:
                problem += f"; not read: {', '.join(profile.unread)}, which may grant it"
            findings.append(
                Finding(
                    "roles",
                    f"role {', '.join(profile.roles)} ({len(nodes)} node(s), profile {arn.rsplit('/', 1)[-1]})",
                    problem,
                    attach_commands(profile.roles, missing, deployment.partition)
                    + " (or grant what is lacking in a policy of the role)",
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
        unread = f"; unless {', '.join(profile.unread)}, not read, grants it" if profile.unread else ""
        return (
            f"its instance profile lacks SSM permissions ({SSM_CORE} is not attached to its role, nor what it grants "
            f"granted by its other policies{unread})"
        )
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
    if not observed.nodes_read:
        return []  # listed as not checked
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
    served = observed.served_nodes
    if not served:
        return [
            Finding(
                "nodes",
                f"tag {tag}",
                f"every running instance carrying the node tag is left out ({observed.nodes[0].left_out}): no node "
                "gets a prefetch",
                "run the images' workloads on managed node groups, Karpenter or self-managed nodes with the SSM agent",
            )
        ]
    groups: dict[tuple[str, str], list[Node]] = {}
    for node in served:
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
        *check_selectors(observed),
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
    selected = (
        ", ".join(
            f"{name} {count} ({_condition(selector)})" for name, count, selector in nodes_per_repository(observed)
        )
        if observed.nodes_read
        else "not known (the nodes could not be read: see below)"
    )
    if not findings and not observed.unreadable:
        online = sum(node.ping_status == "Online" for node in observed.served_nodes)
        out.write(
            f"{head}: ready\n"
            f"  nodes per repository: {selected}\n"
            f"  {len(observed.repositories)} repositories with a matching image; {online} running node(s), all online "
            f"with the policies they need; ECR and S3 endpoints in {', '.join(sorted(observed.endpoints)) or '-'}\n"
        )
        render_left_out(observed, out)
        return
    out.write(f"{head}: {len(findings)} finding(s)\n  nodes per repository: {selected}\n")
    for finding in findings:
        out.write(f"\n[{finding.check}] {finding.subject}\n  problem: {finding.problem}\n  do:      {finding.fix}\n")
    render_left_out(observed, out)
    for what in observed.unreadable:
        out.write(f"\nnot checked: {what}\n")


def render_left_out(observed: Observed, out: TextIO) -> None:
    """Nodes carrying the node tag that this application leaves out (not a finding: nothing to fix), as Windows."""
    groups: dict[str, list[Node]] = {}
    for node in observed.nodes:
        if node.left_out is not None:
            groups.setdefault(node.left_out, []).append(node)
    for why, nodes in groups.items():
        out.write(f"  left out: {len(nodes)} node(s), {why}: {_names(nodes)}\n")


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
