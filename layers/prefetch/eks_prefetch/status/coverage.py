"""Coverage: which online cluster nodes hold the newest image of each watched repository.

A repository's denominator is the online nodes it applies to: supported nodes (not Windows, not Bottlerocket, not
reporting that they have no containerd socket), that its node selector matches, and that did not report its newest
image as having no manifest for their platform.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aws_lambda_powertools import Logger

from eks_prefetch import aws
from eks_prefetch.images import ResolvedImage
from eks_prefetch.node_contract import unsupported_reason
from eks_prefetch.node_output import IMAGE_STATUSES
from eks_prefetch.node_selectors import matches, tags_of
from eks_prefetch.prefetch.resolution import NewestImages
from eks_prefetch.settings import StatusSettings
from eks_prefetch.status import table
from eks_prefetch.status.deadline import TimeLeft, running_out
from eks_prefetch.status.table import NodeState, parse_time

logger = Logger(child=True)


@dataclass(frozen=True)
class RepositoryCoverage:
    repository: str
    newest: ResolvedImage | None
    online: tuple[str, ...]
    missing: tuple[NodeState, ...]
    # Online nodes holding an image of the repository pushed after the newest one (its tag moved back, or the filter
    # rejects the newer image's tag): covered, and never sent the older image.
    ahead: tuple[NodeState, ...] = ()

    @property
    def percent(self) -> float:
        """Online nodes holding the newest digest (or a newer one) over all online nodes; 100 when there is none
        to hold it."""
        if not self.online or self.newest is None:
            return 100.0
        return 100.0 * (len(self.online) - len(self.missing)) / len(self.online)


def coverage_of(
    repository: str,
    newest: ResolvedImage | None,
    online: Iterable[str],
    states: Mapping[tuple[str, str], NodeState],
    pushed: Mapping[str, datetime] | None = None,
) -> RepositoryCoverage:
    """Pure: which online nodes do not hold the newest digest of a repository, with what they last reported; and
    which hold a newer one, by ``pushed`` (when the digests the nodes hold were pushed, tagged or not)."""
    nodes = tuple(sorted(set(online)))
    missing: list[NodeState] = []
    ahead: list[NodeState] = []
    if newest is not None:
        # A node that reported the newest image has no manifest for its OS/architecture is outside the denominator
        # (and so never repaired for it): nothing it could pull would cover it.
        nodes = tuple(
            node
            for node in nodes
            if states.get((node, repository), NodeState(node, repository)).not_applicable_digest != newest.digest
        )
        for node in nodes:
            state = states.get((node, repository), NodeState(node, repository))
            if state.digest == newest.digest:
                continue
            held = (pushed or {}).get(state.digest) if state.digest else None
            (ahead if held is not None and held > newest.pushed_at else missing).append(state)
    return RepositoryCoverage(repository, newest, nodes, tuple(missing), tuple(ahead))


def reported_unsupported(states: Iterable[NodeState], now: datetime, lifetime_seconds: int) -> dict[str, str]:
    """Nodes whose own newest report, over the rows read, is that they cannot be served (the script found no
    containerd socket), with the reason; pure.

    The mark stands until a later report of the node's images (held, or the script's own record of a failure or skip:
    it reached containerd) supersedes it, on any of its rows: containerd installed since, a push reaching the node by
    its tags, a restart's node-launch command. It also lapses ``lifetime_seconds`` (NodeStateTtlSeconds) after the
    report, and the sweep's refresh of the rows' TTL does not renew it: only the node can say it is still unsupported.
    A platform engineer expects an observation, not a verdict: a node fixed in place with no command reaching it
    comes back by itself (coverage then counts it missing and self-repair sends it its images: one command per node
    and TTL, far below the coverage alarm's periods), while a node that stays unsupported renews its mark with every
    push that reaches it by tag, so it is not retried in between."""
    marks: dict[str, tuple[str, str]] = {}
    seen: dict[str, str] = {}
    for state in states:
        node = state.instance_id
        if state.unsupported_at and state.unsupported_at > marks.get(node, ("", ""))[0]:
            marks[node] = (state.unsupported_at, state.unsupported_reason)
        # What the node itself reported about its images (SSM's status of a run that said nothing is not).
        evidence = [state.cached_at]
        if state.last_error_kind in IMAGE_STATUSES:
            evidence.append(state.last_error_at)
        seen[node] = max([seen.get(node, ""), *evidence])
    standing = {}
    for node, (reported_at, reason) in marks.items():
        when = parse_time(reported_at)
        if reported_at <= seen[node] or when is None or now - when >= timedelta(seconds=lifetime_seconds):
            continue
        standing[node] = f"{reason or 'cannot be served'} (reported {reported_at})"
    return standing


def node_tags(settings: StatusSettings, nodes: Iterable[str]) -> dict[str, dict[str, str]] | None:
    """The EC2 tags of these nodes (DescribeInstanceInformation returns none), one DescribeInstances per 200 nodes;
    None without selectors, when no tag is needed."""
    if not settings.node_selectors:
        return None
    return {node: tags_of(instance) for node, instance in aws.ec2.describe_instances(sorted(nodes)).items()}


def online_nodes(
    settings: StatusSettings, *, time_left: TimeLeft = None, reserve: float = 0.0
) -> dict[str, Mapping[str, Any]] | None:
    """The online cluster nodes, by instance id, as DescribeInstanceInformation describes them; None if less than
    ``reserve`` seconds were left before the last page."""
    nodes: dict[str, Mapping[str, Any]] = {}
    for info in aws.ssm.online_managed_nodes(settings.node_tag_key, settings.node_tag_value):
        if running_out(time_left, reserve):
            return None
        nodes[info["InstanceId"]] = info
    return dict(sorted(nodes.items()))


@dataclass(frozen=True)
class FleetView:
    """The fleet as one look saw it: the online nodes, their rows, and each repository's coverage. ``complete``
    False: the look ran out of time, and ``coverages`` holds only the repositories it measured."""

    online: Mapping[str, Mapping[str, Any]]
    states: Mapping[tuple[str, str], NodeState]
    coverages: tuple[RepositoryCoverage, ...]
    complete: bool = True
    # Online cluster nodes this application cannot serve, with the reason: outside every coverage, never repaired.
    unsupported: Mapping[str, str] = field(default_factory=dict)

    @property
    def percent_by_repository(self) -> dict[str, float]:
        return {coverage.repository: round(coverage.percent, 2) for coverage in self.coverages if coverage.newest}


def look_at_fleet(
    settings: StatusSettings,
    newest: NewestImages,
    *,
    time_left: TimeLeft = None,
    reserve: float = 0.0,
    now: datetime | None = None,
) -> FleetView:
    """Coverage of every watched repository over the online cluster nodes: what the sweep and `make status` show.

    With ``time_left``, no step (a page of nodes, a repository's rows) starts with less than ``reserve`` seconds
    left: the repositories measured so far are returned, the others wait for the next look."""
    now = now or datetime.now(UTC)
    online = online_nodes(settings, time_left=time_left, reserve=reserve)
    if online is None:
        # Coverage over part of the fleet would be wrong: nothing is measured.
        logger.warning("no time left to list the online nodes: coverage waits for the next sweep")
        return FleetView({}, {}, (), complete=False)
    unsupported = {node: why for node, info in online.items() if (why := unsupported_reason(info)) is not None}
    supported = [node for node in online if node not in unsupported]
    # Only with selectors: the tags of the supported online nodes, by pages of 200 (bounded by the fleet, not per
    # repository). A node EC2 no longer describes (terminated since) is left out of every selected repository.
    tags = node_tags(settings, supported)
    states: dict[tuple[str, str], NodeState] = {}
    measured: list[tuple[str, ResolvedImage | None, list[str], dict[str, datetime]]] = []
    complete = True
    for repository in settings.repository_names:
        if running_out(time_left, reserve):
            logger.warning(
                "no time left to measure every repository's coverage",
                extra={"measured": len(measured), "repositories": len(settings.repository_names)},
            )
            complete = False
            break
        image = newest.get(repository)
        selector = settings.selector_for(repository)
        nodes = (
            supported
            if not selector or tags is None
            else [n for n in supported if matches(selector, tags.get(n, {})) and n in tags]
        )
        rows = table.read_node_states(settings, nodes, [repository])
        states.update(rows)
        # Only the digests other than the newest that a node holds: few, asked once a resolution.
        others = {state.digest for state in rows.values() if state.digest and image and state.digest != image.digest}
        pushed = newest.push_times(repository, others) if others else {}
        measured.append((repository, image, nodes, pushed))
    # Nodes that reported they cannot be served, from the rows just read (no other read): outside every coverage.
    reported = reported_unsupported(states.values(), now, settings.node_state_ttl_seconds)
    unsupported.update(reported)
    coverages = tuple(
        coverage_of(repository, image, [n for n in nodes if n not in reported], states, pushed)
        for repository, image, nodes, pushed in measured
    )
    return FleetView(online, states, coverages, complete=complete, unsupported=unsupported)
