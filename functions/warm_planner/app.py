"""Schedules and ECR pushes -> when to build a warm boot volume, and with what (docs/warm-volumes.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from eks_prefetch import aws, tracing
from eks_prefetch.events import EcrImageActionEvent, parse_or_drop
from eks_prefetch.settings import PlannerSettings, load
from eks_prefetch.warm.planner import BuildEndedEvent, PlannerEvent, end_build, note_push, run_schedule

logger = Logger()
metrics = Metrics()


@logger.inject_lambda_context(clear_state=True)
@tracing.capture_lambda_handler
@metrics.log_metrics
@aws.within_invocation_time
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    settings = load(PlannerSettings)
    # Several stacks (clusters) may share an account and the namespace: every metric names its cluster.
    metrics.set_default_dimensions(ClusterName=settings.cluster_name)
    parsed = parse_or_drop(event, PlannerEvent, what="planner event", logger=logger, metrics=metrics)
    if parsed is None:
        return {"result": "ignored", "reason": "malformed event"}

    now = datetime.now(UTC)
    if isinstance(parsed, EcrImageActionEvent):
        noted = note_push(parsed, settings, now)
        metrics.add_metric(name="WarmBuildsWanted", unit=MetricUnit.Count, value=int(noted.result == "push-noted"))
        return noted.as_dict()

    if isinstance(parsed, BuildEndedEvent):
        ended = end_build(parsed, settings)
        if ended.result == "build-ended":
            metrics.add_metric(
                name="WarmBuildersLeftBehind", unit=MetricUnit.Count, value=len(ended.builders_terminated)
            )
        return ended.as_dict()

    outcome = run_schedule(parsed.trigger, settings, now)
    metrics.add_metric(name="WarmBuildsStarted", unit=MetricUnit.Count, value=int(outcome.result == "started"))
    if parsed.trigger == "tick":
        metrics.add_metric(name="WarmBuildersLeftBehind", unit=MetricUnit.Count, value=len(outcome.builders_terminated))
        metrics.add_metric(name="WarmSnapshotsDeleted", unit=MetricUnit.Count, value=len(outcome.snapshots_deleted))
        snapshot = outcome.snapshot
        if snapshot is not None:
            metrics.add_metric(name="WarmSnapshotAgeSeconds", unit=MetricUnit.Seconds, value=snapshot.age_seconds)
            metrics.add_metric(name="WarmSnapshotImages", unit=MetricUnit.Count, value=snapshot.images)
    return {"trigger": parsed.trigger, **outcome.as_dict()}
