"""The status function's metrics, as CloudWatch EMF (printed, never PutMetricData).

The names and dimension sets are a contract shared with the dashboard and the alarms in template.yaml (a test
cross-checks them). A Powertools Metrics object carries one dimension set per flush, so each set gets its own
EphemeralMetrics (isolated state, unlike Metrics, whose state is shared by every instance in the process).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

if TYPE_CHECKING:
    from eks_prefetch.coverage import RepositoryCoverage
    from eks_prefetch.invocations import InvocationOutcome
    from eks_prefetch.settings import Settings

# Metric names (the contract).
IMAGES_BY_STATUS = {
    "pulled": "ImagesPulled",
    "cached": "ImagesCached",
    "skipped": "ImagesSkipped",
    "failed": "ImagesFailed",
}
PULL_SECONDS = "PullSeconds"
INVOCATIONS = "Invocations"
INVOCATIONS_FAILED = "InvocationsFailed"
BAD_OUTPUT = "BadOutput"
IMAGES_OMITTED = "ImagesOmitted"
PUSH_TO_CACHED = "PushToCachedSeconds"
LAUNCH_TO_CACHED = "LaunchToCachedSeconds"
COVERAGE = "Coverage"
NODES_MISSING_NEWEST = "NodesMissingNewest"
ONLINE_NODES = "OnlineNodes"
SWEEP_RECOVERED = "SweepRecoveredInvocations"
# Self-repair, per sweep.
REPAIR_COMMANDS_SENT = "RepairCommandsSent"
NODES_REPAIRED = "NodesRepaired"
NODES_BACKED_OFF = "NodesBackedOff"

Metric = tuple[str, MetricUnit, float]


def emit(dimensions: dict[str, str], metrics: Iterable[Metric]) -> None:
    """One EMF document for one dimension set.

    No ``service`` dimension (Powertools adds one from POWERTOOLS_SERVICE_NAME unless the service is empty): the
    dashboard and alarms select these metrics by ClusterName, Repository, Status and Reason only.
    """
    batch: Sequence[Metric] = list(metrics)
    if not batch:
        return
    emf = EphemeralMetrics(service="")
    for name, value in dimensions.items():
        emf.add_dimension(name=name, value=value)
    for name, unit, value in batch:
        emf.add_metric(name=name, unit=unit, value=value)
    emf.flush_metrics()


def emit_invocation_metrics(outcome: InvocationOutcome, settings: Settings) -> None:
    cluster = {"ClusterName": settings.cluster_name}
    emit({**cluster, "Status": outcome.status}, [(INVOCATIONS, MetricUnit.Count, 1)])
    totals: list[Metric] = [
        (INVOCATIONS, MetricUnit.Count, 1),
        (INVOCATIONS_FAILED, MetricUnit.Count, 1 if outcome.failed else 0),
    ]
    if outcome.via == "sweep":
        totals.append((SWEEP_RECOVERED, MetricUnit.Count, 1))
    if outcome.launch_to_cached is not None:
        totals.append((LAUNCH_TO_CACHED, MetricUnit.Seconds, outcome.launch_to_cached))
    output = outcome.output
    if output is not None and output.summary is not None and output.summary.omitted:
        totals.append((IMAGES_OMITTED, MetricUnit.Count, output.summary.omitted))
    emit(cluster, totals)
    if outcome.problem is not None:
        emit({**cluster, "Reason": outcome.problem.value}, [(BAD_OUTPUT, MetricUnit.Count, 1)])

    per_repository: dict[str, list[Metric]] = {}
    for record in output.records if output else ():
        if record.repository:
            batch = per_repository.setdefault(record.repository, [])
            batch.append((IMAGES_BY_STATUS[record.status], MetricUnit.Count, 1))
            if record.status == "pulled" and record.seconds is not None:
                batch.append((PULL_SECONDS, MetricUnit.Seconds, record.seconds))
    for repository, seconds in outcome.push_to_cached:
        per_repository.setdefault(repository, []).append((PUSH_TO_CACHED, MetricUnit.Seconds, seconds))
    for repository, batch in sorted(per_repository.items()):
        emit({**cluster, "Repository": repository}, batch)


def emit_coverage_metrics(coverages: Iterable[RepositoryCoverage], settings: Settings) -> None:
    cluster = {"ClusterName": settings.cluster_name}
    measured = [coverage for coverage in coverages if coverage.newest is not None]
    for coverage in measured:
        emit(
            {**cluster, "Repository": coverage.repository},
            [
                (COVERAGE, MetricUnit.Percent, coverage.percent),
                (NODES_MISSING_NEWEST, MetricUnit.Count, len(coverage.missing)),
            ],
        )
    if measured:
        # The worst repository, without the Repository dimension: what the coverage alarm watches (an alarm cannot
        # search over dimension values).
        emit(
            cluster,
            [
                (COVERAGE, MetricUnit.Percent, min(coverage.percent for coverage in measured)),
                (NODES_MISSING_NEWEST, MetricUnit.Count, sum(len(coverage.missing) for coverage in measured)),
                (ONLINE_NODES, MetricUnit.Count, len(measured[0].online)),
            ],
        )
