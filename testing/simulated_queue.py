"""The node-launch queue and Lambda's SQS event source on a simulated clock (testing/sqs.py has them on moto's wall
clock): hours of backoff take no time, for the API-call scenarios and `make bench`."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from testing.answers import answer_from
from testing.clock import Clock
from testing.deployment import FakeLambdaContext, load_handler
from testing.environment import ACCOUNT, REGION
from testing.sqs import failed_items, lambda_record


@dataclass
class Message:
    body: str
    visible_at: float
    receive_count: int = 0
    message_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    receipt: str = ""


@dataclass
class Outcome:
    """What happened to one launch event."""

    invocations: int = 0  # deliveries to the function (the last one sends, or gives up)
    sent_at: float | None = None
    dead_lettered: bool = False


class SimulatedQueue:
    """The node-launch queue and Lambda's SQS event source on a simulated clock.

    As the template configures them: a message becomes visible again when the visibility the function set runs out
    (or the queue's default after an error), the event source then waits its batching window (worst case: the whole
    window, as for a lone message) and delivers up to ``batch_size`` messages; after ``max_receives`` receives a
    failed message goes to the dead-letter queue.
    """

    QUEUE_ARN = f"arn:aws:sqs:{REGION}:{ACCOUNT}:node-launch"

    def __init__(
        self,
        clock: Clock,
        *,
        max_receives: int,
        batching_window: float,
        batch_size: int = 10,
        default_visibility: float = 360,
        on_deliver: Callable[[float], None] | None = None,
    ) -> None:
        self.clock = clock
        self.max_receives = max_receives
        self.batching_window = batching_window
        self.batch_size = batch_size
        self.default_visibility = default_visibility
        self.on_deliver = on_deliver
        self.handler = load_handler("node_launch").lambda_handler
        self.messages: dict[str, Message] = {}
        self.outcomes: dict[str, Outcome] = {}
        self.invocations = 0
        self._visibility: dict[str, float] = {}
        answer_from("sqs", "ChangeMessageVisibility", self._change_visibility, "simulated-queue")

    def _change_visibility(self, params: Mapping[str, Any]) -> dict[str, Any]:
        self._visibility[params["ReceiptHandle"]] = params["VisibilityTimeout"]
        return {}

    def publish(self, event: Mapping[str, Any], key: str) -> None:
        self.messages[key] = Message(body=json.dumps(event), visible_at=self.clock.now)
        self.outcomes[key] = Outcome()

    def run(self) -> None:
        """Deliver until the queue is empty, advancing the clock from one delivery to the next."""
        while self.messages:
            first = min(message.visible_at for message in self.messages.values())
            self.clock.now = first + self.batching_window
            due = sorted(
                (key for key, message in self.messages.items() if message.visible_at <= self.clock.now),
                key=lambda key: self.messages[key].visible_at,
            )
            for start in range(0, len(due), self.batch_size):
                self._deliver(due[start : start + self.batch_size])

    def _deliver(self, keys: list[str]) -> None:
        if self.on_deliver:
            self.on_deliver(self.clock.now)
        records = []
        for key in keys:
            message = self.messages[key]
            message.receive_count += 1
            message.receipt = str(uuid.uuid4())
            self.outcomes[key].invocations += 1
            records.append(self._record(message))
        self.invocations += 1
        # Each invocation has its own request id, as Lambda gives it (the node-launch path resolves once per batch).
        context = FakeLambdaContext()
        context.aws_request_id = str(uuid.uuid4())
        failed = failed_items(self.handler({"Records": records}, context))
        for key in keys:
            message = self.messages[key]
            if message.message_id not in failed:
                self.outcomes[key].sent_at = self.clock.now
                del self.messages[key]
            elif message.receive_count >= self.max_receives:
                self.outcomes[key].dead_lettered = True
                del self.messages[key]
            else:
                message.visible_at = self.clock.now + self._visibility.pop(message.receipt, self.default_visibility)

    def _record(self, message: Message) -> dict[str, Any]:
        attributes = {
            "ApproximateReceiveCount": str(message.receive_count),
            "SentTimestamp": "1793534400000",
            "SenderId": "AIDAEVENTBRIDGE",
            "ApproximateFirstReceiveTimestamp": "1793534400000",
        }
        return lambda_record(message.message_id, message.receipt, message.body, attributes, self.QUEUE_ARN)
