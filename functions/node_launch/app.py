"""New EC2 instance running → prefetch the newest images onto it before pods land there.

Consumes the node-launch SQS queue with partial batch responses: each record succeeds or fails alone.

The partial batch response is built here rather than with Powertools' BatchProcessor: importing its batch utility
(asyncio, and every event data class) cost about 18 ms of each cold start, for a loop of a few lines
(BENCHMARKS.md, cold start). The response is the same: the message ids of the records whose handler raised.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parser import parse
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import ValidationError

from eks_prefetch import aws, tracing
from eks_prefetch.events import Ec2StateChangeEvent
from eks_prefetch.launch import Delivery, prefetch_launched_node
from eks_prefetch.settings import get_settings

logger = Logger()
metrics = Metrics()

_METRICS = {
    "sent": "CommandsSent",
    "duplicate": "DuplicateEvents",
    "retry": "NodesNotReady",
    "gave_up": "NodesGivenUp",
}


class NodeNotReadyError(Exception):
    """Fails the record: SQS delivers it again after the visibility it was given, or dead-letters it."""


def record_handler(record: Mapping[str, Any], lambda_context: LambdaContext) -> dict[str, Any]:
    """One SQS record; raising fails it alone (retried by SQS, or dead-lettered)."""
    logger.set_correlation_id(record["messageId"])
    try:
        launch = parse(event=record["body"], model=Ec2StateChangeEvent)
    except ValidationError as error:
        # Retrying cannot fix a malformed event: log it and acknowledge.
        logger.warning(
            "malformed EC2 event dropped",
            extra={"message_id": record["messageId"], "errors": error.errors(include_url=False, include_input=False)},
        )
        metrics.add_metric(name="EventsIgnored", unit=MetricUnit.Count, value=1)
        return {"status": "ignored", "reason": "malformed event"}

    logger.set_correlation_id(launch.id)
    delivery = Delivery(
        queue_arn=record["eventSourceARN"],
        receipt_handle=record["receiptHandle"],
        receive_count=receive_count(record),
    )
    try:
        outcome = prefetch_launched_node(launch, get_settings(), delivery=delivery, lambda_context=lambda_context)
    except Exception:
        # Not lost: the record fails and SQS delivers it again after the queue's visibility timeout.
        logger.exception("node launch failed, returned to the queue", extra={"instance_id": launch.detail.instance_id})
        metrics.add_metric(name="RecordsFailed", unit=MetricUnit.Count, value=1)
        raise
    metrics.add_metric(name=_METRICS.get(outcome.status, "EventsIgnored"), unit=MetricUnit.Count, value=1)
    if outcome.failed:
        raise NodeNotReadyError(outcome.reason)
    return outcome.as_dict()


def receive_count(record: Mapping[str, Any]) -> int:
    """SQS always sends it; without it (a hand-made event) the record is taken as a first delivery, and said so."""
    try:
        return max(1, int(record["attributes"]["ApproximateReceiveCount"]))
    except (KeyError, TypeError, ValueError):
        logger.warning("record without a valid ApproximateReceiveCount: taken as the first delivery")
        return 1


@logger.inject_lambda_context(clear_state=True)
@tracing.capture_lambda_handler
@metrics.log_metrics
@aws.within_invocation_time
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if not is_sqs_batch(event):
        # Wired to something other than the queue, or invoked by hand: nothing to retry, so say so and acknowledge.
        logger.error(
            "not an SQS batch: event dropped",
            extra={"event_type": type(event).__name__, "keys": sorted(event)[:10] if isinstance(event, dict) else None},
        )
        metrics.add_metric(name="EventsIgnored", unit=MetricUnit.Count, value=1)
        return {"batchItemFailures": []}
    return process_batch(event["Records"], context)


def process_batch(records: list[dict[str, Any]], context: LambdaContext) -> dict[str, Any]:
    """The partial batch response: every record handled alone, the ones that raised reported by message id.

    A batch whose every record fails is still a partial response, not an error: nodes that are not ready yet are
    normal, and must not fail the invocation (alarms) or undo the visibility each record was given.
    """
    failures = []
    for record in records:
        try:
            record_handler(record, context)
        except Exception:  # the record fails alone; record_handler has logged why
            failures.append({"itemIdentifier": record["messageId"]})
    return {"batchItemFailures": failures}


def is_sqs_batch(event: Any) -> bool:
    records = event.get("Records") if isinstance(event, dict) else None
    return isinstance(records, list) and all(
        isinstance(record, dict) and record.get("eventSource") == "aws:sqs" for record in records
    )
