"""SSM invocation status events and a scheduled sweep → every prefetch counted once, node state, coverage."""

from __future__ import annotations

from typing import Annotated, Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import Field

from eks_prefetch import aws, tracing
from eks_prefetch.events import ScheduledEvent, SsmInvocationStatusEvent, parse_or_drop
from eks_prefetch.settings import StatusSettings, load
from eks_prefetch.status.invocations import record_status_event
from eks_prefetch.status.reports import RecordingScope
from eks_prefetch.status.sweep import sweep_and_repair

logger = Logger()
metrics = Metrics()

# What status events share in a warm container (a push's burst resolves the newest images once). Rebuilt when the
# settings change, which happens only in tests.
_event_scope: RecordingScope | None = None


def event_scope(settings: StatusSettings) -> RecordingScope:
    global _event_scope  # noqa: PLW0603 - one invocation at a time per Lambda container
    if _event_scope is None or _event_scope.settings is not settings:
        _event_scope = RecordingScope.for_events(settings)
    return _event_scope


StatusFunctionEvent = Annotated[SsmInvocationStatusEvent | ScheduledEvent, Field(discriminator="source")]


@logger.inject_lambda_context(correlation_id_path="id", clear_state=True)
@tracing.capture_lambda_handler
@metrics.log_metrics
@aws.within_invocation_time
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    settings = load(StatusSettings)
    # Several stacks (clusters) may share an account and the namespace: every metric names its cluster.
    metrics.set_default_dimensions(ClusterName=settings.cluster_name)
    event_id = event.get("id") if isinstance(event, dict) else None
    parsed = parse_or_drop(event, StatusFunctionEvent, what="event", logger=logger, metrics=metrics, event_id=event_id)
    if parsed is None:
        return {"result": "ignored", "reason": "malformed event"}

    if isinstance(parsed, SsmInvocationStatusEvent):
        return record_status_event(parsed, event_scope(settings)).as_dict()
    return sweep_and_repair(
        settings, time_left=lambda: context.get_remaining_time_in_millis() / 1000, lambda_context=context
    )
