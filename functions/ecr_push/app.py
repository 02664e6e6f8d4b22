"""ECR push → prefetch on every node of the cluster."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parser import parse
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import ValidationError

from eks_prefetch import aws, tracing
from eks_prefetch.events import EcrImageActionEvent
from eks_prefetch.push import prefetch_pushed_image
from eks_prefetch.settings import get_settings

logger = Logger()
metrics = Metrics()


@logger.inject_lambda_context(correlation_id_path="id", clear_state=True)
@tracing.capture_lambda_handler
@metrics.log_metrics
@aws.within_invocation_time
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        push = parse(event=event, model=EcrImageActionEvent)
    except ValidationError as error:
        # Retrying cannot fix a malformed event: log it and acknowledge.
        logger.warning(
            "malformed ECR event dropped",
            extra={
                "event_id": event.get("id") if isinstance(event, dict) else None,
                "errors": error.errors(include_url=False, include_input=False),
            },
        )
        metrics.add_metric(name="EventsIgnored", unit=MetricUnit.Count, value=1)
        return {"status": "ignored", "reason": "malformed event"}

    outcome = prefetch_pushed_image(push, get_settings(), lambda_context=context)
    metric = {"sent": "CommandsSent", "duplicate": "DuplicateEvents"}.get(outcome.status, "EventsIgnored")
    metrics.add_metric(name=metric, unit=MetricUnit.Count, value=1)
    return outcome.as_dict()
