"""ECR push → prefetch on every node of the cluster."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from eks_prefetch import aws, tracing
from eks_prefetch.events import EcrImageActionEvent, parse_or_drop
from eks_prefetch.prefetch.push import prefetch_pushed_image
from eks_prefetch.settings import PushSettings, load

logger = Logger()
metrics = Metrics()


@logger.inject_lambda_context(correlation_id_path="id", clear_state=True)
@tracing.capture_lambda_handler
@metrics.log_metrics
@aws.within_invocation_time
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    settings = load(PushSettings)
    # Several stacks (clusters) may share an account and the namespace: every metric names its cluster.
    metrics.set_default_dimensions(ClusterName=settings.cluster_name)
    event_id = event.get("id") if isinstance(event, dict) else None
    push = parse_or_drop(
        event, EcrImageActionEvent, what="ECR event", logger=logger, metrics=metrics, event_id=event_id
    )
    if push is None:
        return {"status": "ignored", "reason": "malformed event"}

    outcome = prefetch_pushed_image(push, settings, lambda_context=context)
    metric = {"sent": "CommandsSent", "duplicate": "DuplicateEvents"}.get(outcome.status, "EventsIgnored")
    metrics.add_metric(name=metric, unit=MetricUnit.Count, value=1)
    return outcome.as_dict()
