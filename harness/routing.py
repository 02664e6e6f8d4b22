"""Send events through a real (moto) EventBridge rule into an SQS queue, to test the template's event patterns."""

from __future__ import annotations

import json
from typing import Any

import boto3


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
