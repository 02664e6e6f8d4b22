"""Lambda's SQS event source mapping: receive a batch, invoke the function, delete the records it did not report
failed; a failed record comes back when its visibility runs out, and goes to the dead-letter queue after
maxReceiveCount receives.

On two clocks, because they really differ:
- here, ``SqsEventSource`` polls a moto queue on moto's wall clock: moto keeps the visibility and the redrive, and
  "time passing" is making what waits out a visibility visible now (``time_passes``). The harness's router and the
  tests use it (``LaunchQueue``: the node-launch queue as the template configures it).
- testing/simulated_queue.py keeps the messages itself on a simulated clock and answers the function's
  ChangeMessageVisibility, so that hours of backoff take no time: the API-call scenarios and `make bench` use it.
Both build Lambda's records and read the function's answer the same way (``lambda_record``, ``failed_items``).
Nothing here imports the application (the harness loads each function with its own layer, as Lambda does).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import boto3
from moto.sqs.models import sqs_backends

from testing.environment import ACCOUNT, REGION


def lambda_record(
    message_id: str,
    receipt: str,
    body: str,
    attributes: Mapping[str, str],
    queue_arn: str,
    md5: str = "",
    message_attributes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A record of Lambda's SQS event."""
    return {
        "messageId": message_id,
        "receiptHandle": receipt,
        "body": body,
        "attributes": dict(attributes),
        "messageAttributes": dict(message_attributes or {}),
        "md5OfBody": md5,
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": REGION,
    }


def failed_items(response: Any) -> set[str]:
    """The message ids a ReportBatchItemFailures response names."""
    if not isinstance(response, dict):
        return set()
    return {item["itemIdentifier"] for item in response.get("batchItemFailures") or []}


# --- on moto's wall clock ------------------------------------------------------------------------------------------


@dataclass
class Batch:
    event: dict[str, Any]  # what the function is invoked with
    receipts: dict[str, str]  # message id -> receipt handle


class SqsEventSource:
    """One event source mapping over a moto queue: ``receive`` a batch of what is visible, invoke the function with
    its event, ``settle`` the batch (delete what did not fail)."""

    def __init__(self, queue_url: str, queue_arn: str, queue_name: str, batch_size: int = 10) -> None:
        self.sqs = boto3.client("sqs", region_name=REGION)
        self.url, self.arn, self.name = queue_url, queue_arn, queue_name
        self.batch_size = batch_size

    def receive(self) -> Batch | None:
        messages = self.sqs.receive_message(
            QueueUrl=self.url,
            MaxNumberOfMessages=min(self.batch_size, 10),
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not messages:
            return None
        records = [
            lambda_record(
                message["MessageId"],
                message["ReceiptHandle"],
                message["Body"],
                message.get("Attributes", {}),
                self.arn,
                message["MD5OfBody"],
                message.get("MessageAttributes"),
            )
            for message in messages
        ]
        return Batch({"Records": records}, {message["MessageId"]: message["ReceiptHandle"] for message in messages})

    def settle(self, batch: Batch, failed: set[str]) -> None:
        """Delete what succeeded. Failed records are left alone: they come back when the visibility the function gave
        them (or the queue's own) runs out, and SQS moves them to the dead-letter queue after maxReceiveCount."""
        for message_id, receipt in batch.receipts.items():
            if message_id not in failed:
                self.sqs.delete_message(QueueUrl=self.url, ReceiptHandle=receipt)

    def in_flight(self) -> int:
        """Messages in the queue, visible or not. Read from moto's queue: its NotVisible count misses messages whose
        visibility the function changed."""
        return len(sqs_backends[ACCOUNT][REGION].queues[self.name]._messages)

    def time_passes(self) -> int:
        """Every message waiting out a visibility timeout is visible now; returns how many were. (SQS would deliver
        them when the timeout ends; tests need not wait 6 minutes.)"""
        count = 0
        for message in sqs_backends[ACCOUNT][REGION].queues[self.name]._messages:
            if not message.visible:
                message.change_visibility(0)
                count += 1
        return count


class LaunchQueue:
    """The node-launch queue as the template configures it (VisibilityTimeout 360 s, a dead-letter queue after
    ``max_receives`` receives), in moto, with the node-launch function's ``handler`` behind its event source."""

    def __init__(self, handler: Callable[[dict[str, Any], Any], Any], lambda_context: Any, max_receives: int) -> None:
        self.sqs = boto3.client("sqs")
        self.handler = handler
        self.lambda_context = lambda_context
        self.dlq_url = self.sqs.create_queue(QueueName="node-launch-dlq")["QueueUrl"]
        redrive = json.dumps({"deadLetterTargetArn": self._arn(self.dlq_url), "maxReceiveCount": str(max_receives)})
        self.url = self.sqs.create_queue(
            QueueName="node-launch",
            Attributes={"VisibilityTimeout": "360", "RedrivePolicy": redrive},
        )["QueueUrl"]
        self.arn = self._arn(self.url)
        self.source = SqsEventSource(self.url, self.arn, "node-launch")

    def _arn(self, url: str) -> str:
        return self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]

    def publish(self, event: dict[str, Any] | str) -> None:
        body = event if isinstance(event, str) else json.dumps(event)
        self.sqs.send_message(QueueUrl=self.url, MessageBody=body)

    def deliver(self) -> dict[str, Any] | None:
        """Whatever visibility the function set has run out: receive a batch, invoke the handler, delete the records
        it did not report failed. Returns its response; None if the queue is empty."""
        self.source.time_passes()
        batch = self.source.receive()
        if batch is None:
            return None
        response = self.handler(batch.event, self.lambda_context)
        self.source.settle(batch, failed_items(response))
        return response

    def counts(self) -> dict[str, int]:
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        attributes = self.sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=names)["Attributes"]
        return {"visible": int(attributes[names[0]]), "hidden": int(attributes[names[1]])}

    def dead_letters(self) -> list[str]:
        messages = self.sqs.receive_message(QueueUrl=self.dlq_url, MaxNumberOfMessages=10).get("Messages", [])
        return [message["Body"] for message in messages]
