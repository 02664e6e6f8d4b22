"""Coverage: which online cluster nodes hold the newest image of each watched repository."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from eks_prefetch import aws
from eks_prefetch import status_table as table
from eks_prefetch.images import ResolvedImage
from eks_prefetch.resolution import NewestImages
from eks_prefetch.settings import Settings
from eks_prefetch.status_table import NodeState


@dataclass(frozen=True)
class RepositoryCoverage:
    repository: str
    newest: ResolvedImage | None
    online: tuple[str, ...]
    missing: tuple[NodeState, ...]

    @property
    def percent(self) -> float:
        """Online nodes holding the newest digest over all online nodes; 100 when there is none to hold it."""
        if not self.online or self.newest is None:
            return 100.0
        return 100.0 * (len(self.online) - len(self.missing)) / len(self.online)


def coverage_of(
    repository: str, newest: ResolvedImage | None, online: Iterable[str], states: Mapping[tuple[str, str], NodeState]
) -> RepositoryCoverage:
    """Pure: which online nodes do not hold the newest digest of a repository, with what they last reported."""
    nodes = tuple(sorted(set(online)))
    missing: tuple[NodeState, ...] = ()
    if newest is not None:
        missing = tuple(
            states.get((node, repository), NodeState(node, repository))
            for node in nodes
            if states.get((node, repository), NodeState(node, repository)).digest != newest.digest
        )
    return RepositoryCoverage(repository, newest, nodes, missing)


def online_nodes(settings: Settings) -> dict[str, Mapping[str, Any]]:
    """The online cluster nodes, by instance id, as DescribeInstanceInformation describes them."""
    nodes = {
        info["InstanceId"]: info
        for info in aws.ssm.online_managed_nodes(settings.node_tag_key, settings.node_tag_value)
    }
    return dict(sorted(nodes.items()))


@dataclass(frozen=True)
class FleetView:
    """The fleet as one look saw it: the online nodes, their rows, and each repository's coverage."""

    online: Mapping[str, Mapping[str, Any]]
    states: Mapping[tuple[str, str], NodeState]
    coverages: tuple[RepositoryCoverage, ...]

    @property
    def percent_by_repository(self) -> dict[str, float]:
        return {coverage.repository: round(coverage.percent, 2) for coverage in self.coverages if coverage.newest}


def look_at_fleet(settings: Settings, newest: NewestImages) -> FleetView:
    """Coverage of every watched repository over the online cluster nodes: what the sweep and `make status` show."""
    online = online_nodes(settings)
    states = table.read_node_states(settings, online, settings.repository_names)
    coverages = tuple(
        coverage_of(repository, newest.get(repository), online, states) for repository in settings.repository_names
    )
    return FleetView(online, states, coverages)
