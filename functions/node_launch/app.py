"""New EC2 instance running → prefetch the newest images onto it before pods land there.

Consumes the node-launch SQS queue with partial batch responses: each record succeeds or fails alone.
"""

from __future__ import annotations

import functools
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from eks_prefetch import aws, tracing
from eks_prefetch.events import Ec2StateChangeEvent, parse_or_drop
from eks_prefetch.prefetch.launch import Delivery, LaunchBatch, prefetch_launched_node
from eks_prefetch.settings import LaunchSettings, load

logger = Logger()
metrics = Metrics()
# A batch whose every record fails is still a partial response, not an error: nodes that are not ready yet are
# normal, and must not fail the invocation (alarms) or undo the visibility each record was given.
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)

_METRICS = {
    "sent": "CommandsSent",
    "duplicate": "DuplicateEvents",
    "retry": "NodesNotReady",
    # Held back for its slot in the registry path's budget (a scale-out larger than it carries at once).
    "waiting": "NodesWaitingForBandwidth",
    "gave_up": "NodesGivenUp",
}


class NodeNotReadyError(Exception):
    """Fails the record: SQS delivers it again after the visibility it was given, or dead-letters it."""


def record_handler(record: SQSRecord, lambda_context: LambdaContext, *, batch: LaunchBatch) -> dict[str, Any]:
    logger.set_correlation_id(record.message_id)
    launch = parse_or_drop(
        record.body, Ec2StateChangeEvent, what="EC2 event", logger=logger, metrics=metrics, message_id=record.message_id
    )
    if launch is None:
        return {"status": "ignored", "reason": "malformed event"}

    logger.set_correlation_id(launch.id)
    delivery = Delivery(
        queue_arn=record.event_source_arn,
        receipt_handle=record.receipt_handle,
        receive_count=receive_count(record),
    )
    try:
        outcome = prefetch_launched_node(launch, batch, delivery=delivery, lambda_context=lambda_context)
    except Exception:
        # Not lost: the record fails and SQS delivers it again after the queue's visibility timeout.
        logger.exception("node launch failed, returned to the queue", extra={"instance_id": launch.detail.instance_id})
        metrics.add_metric(name="RecordsFailed", unit=MetricUnit.Count, value=1)
        raise
    metrics.add_metric(name=_METRICS.get(outcome.status, "EventsIgnored"), unit=MetricUnit.Count, value=1)
    if outcome.failed:
        raise NodeNotReadyError(outcome.reason)
    return outcome.as_dict()


def receive_count(record: SQSRecord) -> int:
    """SQS always sends it; without it (a hand-made event) the record is taken as a first delivery, and said so."""
    try:
        return max(1, int(record.attributes.approximate_receive_count))
    except (KeyError, TypeError, ValueError):
        logger.warning("record without a valid ApproximateReceiveCount: taken as the first delivery")
        return 1


@logger.inject_lambda_context(clear_state=True)
@tracing.capture_lambda_handler
@metrics.log_metrics
@aws.within_invocation_time
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    settings = load(LaunchSettings)
    # Several stacks (clusters) may share an account and the namespace: every metric names its cluster.
    metrics.set_default_dimensions(ClusterName=settings.cluster_name)
    if not is_sqs_batch(event):
        # Wired to something other than the queue, or invoked by hand: nothing to retry, so say so and acknowledge.
        logger.error(
            "not an SQS batch: event dropped",
            extra={"event_type": type(event).__name__, "keys": sorted(event)[:10] if isinstance(event, dict) else None},
        )
        metrics.add_metric(name="EventsIgnored", unit=MetricUnit.Count, value=1)
        return {"batchItemFailures": []}
    batch = LaunchBatch.of(event["Records"], settings)
    return process_partial_response(
        event=event,
        record_handler=functools.partial(record_handler, batch=batch),
        processor=processor,
        context=context,
    )


def is_sqs_batch(event: Any) -> bool:
    records = event.get("Records") if isinstance(event, dict) else None
    return isinstance(records, list) and all(
        isinstance(record, dict) and record.get("eventSource") == "aws:sqs" for record in records
    )
