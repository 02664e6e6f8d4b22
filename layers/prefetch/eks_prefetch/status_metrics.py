"""The status function's metrics, as CloudWatch EMF (printed, never PutMetricData).

The names and dimension sets are a contract shared with the dashboard and the alarms in template.yaml (a test
cross-checks them). A Powertools Metrics object carries one dimension set per flush, so each set gets its own
EphemeralMetrics (isolated state, unlike Metrics, whose state is shared by every instance in the process).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

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
