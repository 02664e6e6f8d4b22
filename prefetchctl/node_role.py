"""What a node's role needs for this application, and whether its policies grant it (for `make preflight`).

A need is met by one of its managed policies attached to the role, or by the role's policies granting one of its sets
of actions on their resources: inline or attached, AWS managed or the account's own, read together (a customer-managed
policy that grants everything is no finding). Documents are read as IAM reads them, within what can be told
offline: ``*`` and ``?`` wildcards, Action/NotAction, Resource/NotResource, and a Deny overriding an Allow. Conditions
cannot be evaluated here (they depend on the request): an Allow with conditions counts as granting, a Deny with
conditions as not denying, so that a condition never makes a finding of its own. Permission boundaries and SCPs are
not read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

SSM_CORE = "AmazonSSMManagedInstanceCore"
# Any of these lets the node pull from ECR.
ECR_READ = (
    "AmazonEC2ContainerRegistryReadOnly",
    "AmazonEC2ContainerRegistryPullOnly",
    "AmazonEC2ContainerRegistryPowerUser",
)
# Run Command reaches the agent through ssmmessages when it can, else through ec2messages: either set will do.
_AGENT_REGISTRATION = ("ssm:UpdateInstanceInformation",)
_EC2MESSAGES = tuple(
    f"ec2messages:{action}"
    for action in ("AcknowledgeMessage", "DeleteMessage", "FailMessage", "GetEndpoint", "GetMessages", "SendReply")
)
_SSMMESSAGES = ("ssmmessages:CreateControlChannel", "ssmmessages:OpenControlChannel")
_ECR_PULL = ("ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer")

Grant = tuple[str, str]  # (action, resource ARN)


@dataclass(frozen=True)
class Need:
    """One thing the node's role must allow: met by any of ``policies`` attached, or by every grant of any one of
    ``grants`` in its inline policies."""

    label: str  # in a finding
    policies: tuple[str, ...]  # AWS managed policy names, or policy ARNs; the first is the one to attach
    grants: tuple[tuple[Grant, ...], ...]


def node_needs(
    *,
    partition: str,
    region: str,
    account: str,
    repositories: Sequence[str],
    node_policy: tuple[str, str] | None,
    log_group: str | None,
) -> list[Need]:
    """The SSM agent, ECR pulls of the watched repositories, and (``node_policy``: its label and ARN) what the stack's
    NodeRolePolicy grants: writing the command output to its log group (``log_group``, its name)."""
    repository = f"arn:{partition}:ecr:{region}:{account}:repository/"
    needs = [
        Need(
            SSM_CORE,
            (SSM_CORE,),
            tuple(
                tuple((action, "*") for action in (*_AGENT_REGISTRATION, *channel))
                for channel in (_SSMMESSAGES, _EC2MESSAGES)
            ),
        ),
        Need(
            ECR_READ[0],
            ECR_READ,
            (
                (
                    ("ecr:GetAuthorizationToken", "*"),
                    *((action, f"{repository}{name}") for name in repositories for action in _ECR_PULL),
                ),
            ),
        ),
    ]
    if node_policy is not None:
        label, arn = node_policy
        grants: tuple[tuple[Grant, ...], ...] = ()
        if log_group:
            groups = f"arn:{partition}:logs:{region}:{account}:log-group:"
            # The ARNs IAM authorizes these actions on: the group's ("...:*"), a stream's, and any group's.
            group, stream = f"{groups}{log_group}:*", f"{groups}{log_group}:log-stream:*"
            grants = (
                (
                    ("logs:CreateLogStream", group),
                    ("logs:DescribeLogStreams", group),
                    ("logs:PutLogEvents", stream),
                    ("logs:DescribeLogGroups", f"{groups}*"),
                ),
            )
        needs.append(Need(f"{label} ({arn})", (arn,), grants))
    return needs


@cache
def _wildcard(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    body = "".join(".*" if char == "*" else "." if char == "?" else re.escape(char) for char in pattern)
    return re.compile(body, re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL)


def _listed(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else [item for item in value or () if isinstance(item, str)]


def _applies(statement: Mapping[str, Any], action: str, resource: str) -> bool:
    def matches(key: str, value: str, ignore_case: bool) -> bool | None:
        if key in statement:
            return any(_wildcard(p, ignore_case).fullmatch(value) for p in _listed(statement[key]))
        if f"Not{key}" in statement:
            return not any(_wildcard(p, ignore_case).fullmatch(value) for p in _listed(statement[f"Not{key}"]))
        return None

    # Actions are case-insensitive in IAM, resource ARNs are not.
    return bool(matches("Action", action, True)) and bool(matches("Resource", resource, False))


def _statements(documents: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    found = []
    for document in documents:
        statements = document.get("Statement") or []
        found.extend(
            s for s in ([statements] if isinstance(statements, Mapping) else statements) if isinstance(s, Mapping)
        )
    return found


def allowed(documents: Iterable[Mapping[str, Any]], action: str, resource: str) -> bool:
    """Whether the policy documents allow the action on the resource (see the module's note on conditions)."""
    statements = _statements(documents)
    if any(s.get("Effect") == "Deny" and "Condition" not in s and _applies(s, action, resource) for s in statements):
        return False
    return any(s.get("Effect") == "Allow" and _applies(s, action, resource) for s in statements)


def unmet(need: Need, attached: Iterable[str], documents: Sequence[Mapping[str, Any]]) -> tuple[Grant, ...] | None:
    """None if the role meets the need; else what its policies (``documents``: inline and attached) lack of the
    closest set of grants (empty when the need has no equivalent in grants to check)."""
    names = {arn.rsplit("/", 1)[-1] if ":iam::aws:policy/" in arn else arn for arn in attached}
    if names.intersection(need.policies):
        return None
    missing = [tuple(grant for grant in grants if not allowed(documents, *grant)) for grants in need.grants]
    if any(not lacking for lacking in missing):
        return None
    return min(missing, key=len) if missing else ()


def attach_commands(roles: Iterable[str], needs: Iterable[Need], partition: str) -> str:
    """``aws iam attach-role-policy`` for each role and need (its first policy)."""
    arns = [
        need.policies[0]
        if need.policies[0].startswith("arn:")
        else f"arn:{partition}:iam::aws:policy/{need.policies[0]}"
        for need in needs
    ]
    return "; ".join(
        f"aws iam attach-role-policy --role-name {role} --policy-arn {arn}" for role in roles for arn in arns
    )


def describe(lacking: Iterable[Sequence[Grant]]) -> str:
    """Grants as a finding says them: the actions on each resource."""
    by_resource: dict[str, list[str]] = {}
    for grants in lacking:
        for action, resource in grants:
            by_resource.setdefault(resource, []).append(action)
    return "; ".join(f"{', '.join(actions)} on {resource}" for resource, actions in by_resource.items())
