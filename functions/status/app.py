"""SSM invocation status events and a scheduled sweep → every prefetch counted once, node state, coverage."""

from __future__ import annotations

from typing import Annotated, Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parser import parse
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import Field, ValidationError

from eks_prefetch import tracing
from eks_prefetch.events import ScheduledEvent, SsmInvocationStatusEvent
from eks_prefetch.settings import get_settings
from eks_prefetch.status import record_status_event, sweep

logger = Logger()
metrics = Metrics()

StatusFunctionEvent = Annotated[SsmInvocationStatusEvent | ScheduledEvent, Field(discriminator="source")]


@logger.inject_lambda_context(correlation_id_path="id", clear_state=True)
@tracing.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        parsed = parse(event=event, model=StatusFunctionEvent)
    except ValidationError as error:
        # Retrying cannot fix a malformed event: log it and acknowledge.
        logger.warning(
            "malformed event dropped",
            extra={
                "event_id": event.get("id") if isinstance(event, dict) else None,
                "errors": error.errors(include_url=False, include_input=False),
            },
        )
        metrics.add_metric(name="EventsIgnored", unit=MetricUnit.Count, value=1)
        return {"result": "ignored", "reason": "malformed event"}

    if isinstance(parsed, SsmInvocationStatusEvent):
        return record_status_event(parsed, get_settings()).as_dict()
    return sweep(get_settings(), time_left=lambda: context.get_remaining_time_in_millis() / 1000).as_dict()
