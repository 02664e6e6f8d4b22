"""SQS: the node-launch queue's own retry delay."""

from __future__ import annotations

from typing import Any

from eks_prefetch.aws import clients
from eks_prefetch.images import partition_dns_suffix


def queue_url(queue_arn: str) -> str:
    """The URL of the SQS queue an ARN names (the Lambda SQS event carries only the ARN)."""
    _arn, _partition, _service, region, account, name = queue_arn.split(":", 5)
    return f"https://sqs.{region}.{partition_dns_suffix(region)}/{account}/{name}"


def change_visibility(queue_arn: str, receipt_handle: str, timeout_seconds: int, sqs: Any = None) -> None:
    """Hide a received message for timeout_seconds from now: the queue's own, Lambda-free, retry delay."""
    (sqs or clients.client("sqs")).change_message_visibility(
        QueueUrl=queue_url(queue_arn),
        ReceiptHandle=receipt_handle,
        VisibilityTimeout=timeout_seconds,
    )
