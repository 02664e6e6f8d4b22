"""The status function's metrics, as CloudWatch EMF (printed, never PutMetricData).

The names and dimension sets are a contract shared with the dashboard and the alarms in template.yaml (a test
cross-checks them). A Powertools Metrics object carries one dimension set per flush, so each set gets its own
EphemeralMetrics (isolated state, unlike Metrics, whose state is shared by every instance in the process).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

if TYPE_CHECKING:
    from eks_prefetch.settings import ClusterSettings
    from eks_prefetch.status.coverage import RepositoryCoverage
    from eks_prefetch.status.invocations import InvocationOutcome

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
# Failed images by their stable reason (unauthorized, not_found, timeout, ...), whatever the containerd release.
IMAGES_FAILED_BY_REASON = "ImagesFailedByReason"
PUSH_TO_CACHED = "PushToCachedSeconds"
LAUNCH_TO_CACHED = "LaunchToCachedSeconds"
# New nodes whose first prefetch (the report LaunchToCachedSeconds measures) found every image cached, or not. Both are
# emitted for each such node (1 and 0), with or without WarmVolumes: their sums count nodes, and NodesBootedWarm's
# average is the share of warm boots; the cold count before WarmVolumes is the baseline to compare with.
NODES_BOOTED_WARM = "NodesBootedWarm"
NODES_BOOTED_COLD = "NodesBootedCold"
COVERAGE = "Coverage"
NODES_MISSING_NEWEST = "NodesMissingNewest"
ONLINE_NODES = "OnlineNodes"
# Online cluster nodes this application cannot serve (Windows, Bottlerocket): outside coverage, never repaired.
UNSUPPORTED_NODES = "UnsupportedNodes"
SWEEP_RECOVERED = "SweepRecoveredInvocations"
# Self-repair, per sweep.
REPAIR_COMMANDS_SENT = "RepairCommandsSent"
NODES_REPAIRED = "NodesRepaired"
NODES_BACKED_OFF = "NodesBackedOff"

Metric = tuple[str, MetricUnit, float]
# One EMF document: a dimension set and its metrics.
Document = tuple[dict[str, str], list[Metric]]


def finite(value: float) -> float | None:
    """The value as a float CloudWatch accepts, or None: EMF is JSON, which has no Infinity or NaN, and a value
    too large for a float must not raise while metrics are emitted."""
    try:
        number = float(value)
    except (OverflowError, TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def emit(dimensions: dict[str, str], metrics: Iterable[Metric]) -> None:
    """One EMF document for one dimension set; a value that is not a finite number is left out.

    No ``service`` dimension (Powertools adds one from POWERTOOLS_SERVICE_NAME unless the service is empty): the
    dashboard and alarms select these metrics by ClusterName, Repository, Status and Reason only.
    """
    batch: Sequence[Metric] = [
        (name, unit, number) for name, unit, value in metrics if (number := finite(value)) is not None
    ]
    if not batch:
        return
    emf = EphemeralMetrics(service="")
    for name, value in dimensions.items():
        emf.add_dimension(name=name, value=value)
    for name, unit, value in batch:
        emf.add_metric(name=name, unit=unit, value=value)
    emf.flush_metrics()


def emit_all(documents: Iterable[Document]) -> None:
    for dimensions, metrics in documents:
        emit(dimensions, metrics)


def emit_invocation_metrics(outcome: InvocationOutcome, settings: ClusterSettings) -> None:
    emit_all(invocation_metrics(outcome, settings))


def invocation_metrics(outcome: InvocationOutcome, settings: ClusterSettings) -> list[Document]:
    """The metrics of one counted invocation, built (and checked: finite values only) before it is claimed."""
    cluster = {"ClusterName": settings.cluster_name}
    documents: list[Document] = [({**cluster, "Status": outcome.status}, [(INVOCATIONS, MetricUnit.Count, 1)])]
    totals: list[Metric] = [
        (INVOCATIONS, MetricUnit.Count, 1),
        (INVOCATIONS_FAILED, MetricUnit.Count, 1 if outcome.failed else 0),
    ]
    if outcome.via == "sweep":
        totals.append((SWEEP_RECOVERED, MetricUnit.Count, 1))
    if outcome.launch_to_cached is not None:
        totals.append((LAUNCH_TO_CACHED, MetricUnit.Seconds, outcome.launch_to_cached))
    if outcome.booted_warm is not None:
        totals.append((NODES_BOOTED_WARM, MetricUnit.Count, int(outcome.booted_warm)))
        totals.append((NODES_BOOTED_COLD, MetricUnit.Count, int(not outcome.booted_warm)))
    output = outcome.output
    if output is not None and output.summary is not None and output.summary.omitted:
        totals.append((IMAGES_OMITTED, MetricUnit.Count, output.summary.omitted))
    documents.append((cluster, totals))
    if outcome.problem is not None:
        documents.append(({**cluster, "Reason": outcome.problem.value}, [(BAD_OUTPUT, MetricUnit.Count, 1)]))

    per_repository: dict[str, list[Metric]] = {}
    failure_reasons: dict[str, int] = {}
    for record in output.records if output else ():
        if record.failure_reason:
            failure_reasons[record.failure_reason] = failure_reasons.get(record.failure_reason, 0) + 1
        if record.repository:
            batch = per_repository.setdefault(record.repository, [])
            batch.append((IMAGES_BY_STATUS[record.status], MetricUnit.Count, 1))
            if record.status == "pulled" and record.seconds is not None:
                batch.append((PULL_SECONDS, MetricUnit.Seconds, record.seconds))
    for repository, seconds in outcome.push_to_cached:
        per_repository.setdefault(repository, []).append((PUSH_TO_CACHED, MetricUnit.Seconds, seconds))
    for repository, batch in sorted(per_repository.items()):
        documents.append(({**cluster, "Repository": repository}, batch))
    for reason, count in sorted(failure_reasons.items()):
        documents.append(({**cluster, "Reason": reason}, [(IMAGES_FAILED_BY_REASON, MetricUnit.Count, count)]))
    return [
        (dimensions, [(name, unit, number) for name, unit, value in metrics if (number := finite(value)) is not None])
        for dimensions, metrics in documents
    ]


def emit_coverage_metrics(
    coverages: Iterable[RepositoryCoverage],
    settings: ClusterSettings,
    *,
    online: int | None = None,
    unsupported: int = 0,
) -> None:
    """``online``: every online cluster node (each repository's own denominator may be fewer); ``unsupported``: those
    this application cannot serve."""
    cluster = {"ClusterName": settings.cluster_name}
    measured = [coverage for coverage in coverages if coverage.newest is not None]
    emit(cluster, [(UNSUPPORTED_NODES, MetricUnit.Count, unsupported)])
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
                (ONLINE_NODES, MetricUnit.Count, len(measured[0].online) if online is None else online),
            ],
        )
