"""Event routing: the template's rules and event sources, delivering events to the emulated stack's functions and
queues (Router), and routed_events, which sends events through a real (moto) EventBridge rule into an SQS queue."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import boto3
from moto.events.models import EventPattern

from harness.stack import REGION, EventSource, Function, Invocation, Stack
from testing.events import event_envelope
from testing.sqs import SqsEventSource, failed_items


def routed_events(pattern: dict[str, Any], events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events, in EventBridge's shape, that a rule with ``pattern`` delivers to its queue target."""
    eventbridge = boto3.client("events")
    sqs = boto3.client("sqs")
    queue_url = sqs.create_queue(QueueName="routed")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    eventbridge.put_rule(Name="under-test", EventPattern=json.dumps(pattern))
    eventbridge.put_targets(Rule="under-test", Targets=[{"Id": "queue", "Arn": queue_arn}])
    for event in events:
        entry = {
            "Source": event["source"],
            "DetailType": event["detail-type"],
            "Detail": json.dumps(event["detail"]),
            "Resources": event["resources"],
        }
        assert eventbridge.put_events(Entries=[entry])["FailedEntryCount"] == 0
    received = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", [])
    return [json.loads(message["Body"]) for message in received]


# --- The stack's own wiring: rules -> functions and queues, queues -> functions ------------------------------------


@dataclass
class Delivery:
    """What happened to one event or one batch: for the demo's narration and the tests."""

    source: str  # the rule or queue
    target: str  # the function or queue
    invocation: Invocation | None = None
    attempts: int = 1
    dead_lettered: bool = False


@dataclass
class _Rule:
    logical_id: str
    pattern: EventPattern | None
    schedule: str | None
    targets: list[dict[str, Any]]


@dataclass
class _Mapping:
    logical_id: str
    queue: dict[str, str]
    function: Function
    source: SqsEventSource
    report_failures: bool


class Router:
    """Delivers events as the template wires them: every rule of the stack (AWS::Events::Rule, SAM EventBridgeRule
    and Schedule events) is matched with moto's EventBridge pattern matcher; a function target is invoked
    asynchronously (Lambda's retries, then its OnFailure destination), a queue target gets the event as the message
    body; pump() polls each SQS event source like Lambda's event source mapping. Nothing here names a function or a
    queue: a rule or function added to template.yaml is routed without code changes."""

    def __init__(self, stack: Stack, on_delivery: Callable[[Delivery], None] | None = None) -> None:
        self.stack = stack
        self.sqs = boto3.client("sqs", region_name=REGION)
        self.on_delivery = on_delivery or (lambda _delivery: None)
        self.deliveries: list[Delivery] = []
        self.rules: list[_Rule] = []
        self.mappings: list[_Mapping] = []
        for source in stack.event_sources:
            if source.kind == "rule":
                self.rules.append(self._rule(source))
            else:
                self.mappings.append(self._mapping(source))

    def _rule(self, source: EventSource) -> _Rule:
        properties = source.properties
        raw = properties.get("EventPattern", properties.get("Pattern"))
        if isinstance(raw, str):
            raw = json.loads(raw)
        targets = properties.get("Targets") or [
            # A SAM event on a function: its one target is the function, with the event's retry policy and DLQ.
            {
                "Arn": source.target_arns[0],
                "RetryPolicy": properties.get("RetryPolicy"),
                "DeadLetterConfig": properties.get("DeadLetterConfig"),
                "Input": properties.get("Input"),
            }
        ]
        return _Rule(
            logical_id=source.logical_id,
            pattern=EventPattern.load(json.dumps(raw)) if raw else None,
            schedule=properties.get("ScheduleExpression") or properties.get("Schedule"),
            targets=targets,
        )

    def _mapping(self, source: EventSource) -> _Mapping:
        properties = source.properties
        queue = self.stack.queue_by_arn(properties["Queue"])
        function = self.stack.function_by_arn(source.target_arns[0])
        if queue is None or function is None:
            raise ValueError(f"{source.logical_id}: queue or function not in the stack")
        return _Mapping(
            logical_id=source.logical_id,
            queue=queue,
            function=function,
            source=SqsEventSource(queue["url"], queue["arn"], queue["name"], int(properties.get("BatchSize", 10))),
            report_failures="ReportBatchItemFailures" in (properties.get("FunctionResponseTypes") or []),
        )

    # --- EventBridge --------------------------------------------------------------------------------------------

    def matching_rules(self, event: dict[str, Any]) -> list[str]:
        return [rule.logical_id for rule in self.rules if rule.pattern and rule.pattern.matches_event(event)]

    def emit(self, event: dict[str, Any]) -> list[Delivery]:
        """Put one event on the default bus: every rule whose pattern matches delivers it to its targets."""
        deliveries = []
        for rule in self.rules:
            if rule.pattern is None or not rule.pattern.matches_event(event):
                continue
            for target in rule.targets:
                payload = json.loads(target["Input"]) if target.get("Input") else event
                deliveries.append(self._deliver(rule.logical_id, target, payload))
        return deliveries

    def fire_schedules(self, function: str | None = None) -> list[Delivery]:
        """Every scheduled rule fires once now (an EventBridge rule schedule's event); with ``function``, only the
        rules that target that function (its logical id)."""
        deliveries = []
        for rule in self.rules:
            if rule.schedule is None:
                continue
            if function is not None and not any(
                (found := self.stack.function_by_arn(target["Arn"])) is not None and found.logical_id == function
                for target in rule.targets
            ):
                continue
            event = event_envelope("aws.events", "Scheduled Event", {})
            for target in rule.targets:
                payload = json.loads(target["Input"]) if target.get("Input") else event
                deliveries.append(self._deliver(rule.logical_id, target, payload))
        return deliveries

    def _deliver(self, source: str, target: dict[str, Any], event: dict[str, Any]) -> Delivery:
        arn = target["Arn"]
        function = self.stack.function_by_arn(arn)
        if function is not None:
            delivery = self._invoke_async(source, function, event)
        elif (queue := self.stack.queue_by_arn(arn)) is not None:
            self.sqs.send_message(QueueUrl=queue["url"], MessageBody=json.dumps(event))
            delivery = Delivery(source=source, target=_logical_id(self.stack, queue))
        else:
            raise ValueError(f"rule {source}: target {arn} is not a function or queue of the stack")
        self.deliveries.append(delivery)
        self.on_delivery(delivery)
        return delivery

    def _invoke_async(self, source: str, function: Function, event: dict[str, Any]) -> Delivery:
        """Lambda's asynchronous invocation: retried MaximumRetryAttempts times (immediately here, where Lambda
        waits about 1 and 2 minutes), then sent to the OnFailure destination."""
        config = function.event_invoke_config
        attempts = 1 + int(config.get("MaximumRetryAttempts", 2))
        for attempt in range(1, attempts + 1):
            invocation = function.invoke(event)
            if invocation.error is None:
                return Delivery(source=source, target=function.logical_id, invocation=invocation, attempts=attempt)
        destination = ((config.get("DestinationConfig") or {}).get("OnFailure") or {}).get("Destination")
        if destination and (queue := self.stack.queue_by_arn(destination)) is not None:
            record = {
                "version": "1.0",
                "timestamp": datetime.now(UTC).isoformat(),
                "requestContext": {
                    "requestId": str(uuid.uuid4()),
                    "functionArn": f"{function.arn}:$LATEST",
                    "condition": "RetriesExhausted",
                    "approximateInvokeCount": attempts,
                },
                "requestPayload": event,
                "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
                "responsePayload": {"errorMessage": invocation.error, "errorType": invocation.error_type},
            }
            self.sqs.send_message(QueueUrl=queue["url"], MessageBody=json.dumps(record))
        return Delivery(
            source=source,
            target=function.logical_id,
            invocation=invocation,
            attempts=attempts,
            dead_lettered=bool(destination),
        )

    # --- SQS event source mappings ------------------------------------------------------------------------------

    def pump(self) -> list[Delivery]:
        """One poll of every SQS event source (testing/sqs.py): receive a batch of what is visible, invoke, delete
        what succeeded (everything, after a function error; what the function did not report failed, with
        ReportBatchItemFailures)."""
        deliveries = []
        for mapping in self.mappings:
            batch = mapping.source.receive()
            if batch is None:
                continue
            invocation = mapping.function.invoke(batch.event)
            if invocation.error is not None:
                failed = set(batch.receipts)
            elif mapping.report_failures:
                failed = failed_items(invocation.result)
            else:
                failed = set()
            mapping.source.settle(batch, failed)
            delivery = Delivery(
                source=_logical_id(self.stack, mapping.queue), target=mapping.function.logical_id, invocation=invocation
            )
            self.deliveries.append(delivery)
            self.on_delivery(delivery)
            deliveries.append(delivery)
        return deliveries

    def in_flight(self) -> int:
        """Messages in the mapped queues, visible or not."""
        return sum(mapping.source.in_flight() for mapping in self.mappings)

    def fast_forward(self) -> int:
        """Time passes for the mapped queues: every message waiting out a visibility timeout is visible now.
        Returns how many were."""
        return sum(mapping.source.time_passes() for mapping in self.mappings)


def _logical_id(stack: Stack, queue: dict[str, str]) -> str:
    return next(logical_id for logical_id, known in stack.queues.items() if known is queue)
