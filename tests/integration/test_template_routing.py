"""The template's EventBridge pattern for pushes, evaluated by moto's EventBridge on the sample events.

The pattern is read from template.yaml (with !Ref RepositoryNames resolved), put on a rule that targets an SQS
queue, and the samples in events/ecr_push are sent through it.
"""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest

from tests import cfn
from tests.conftest import WATCHED

EVENTS = Path(__file__).resolve().parents[2] / "events" / "ecr_push"


def delivered(pattern: dict, samples: list[dict]) -> list[str]:
    """Event ids that the rule routed to its target."""
    events = boto3.client("events")
    sqs = boto3.client("sqs")
    queue_url = sqs.create_queue(QueueName="routed")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="ecr-push", EventPattern=json.dumps(pattern))
    events.put_targets(Rule="ecr-push", Targets=[{"Id": "queue", "Arn": queue_arn}])
    for sample in samples:
        entry = {
            "Source": sample["source"],
            "DetailType": sample["detail-type"],
            "Detail": json.dumps(sample["detail"]),
            "Resources": sample["resources"],
        }
        assert events.put_events(Entries=[entry])["FailedEntryCount"] == 0
    received = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)["Messages"]
    return sorted(json.loads(message["Body"])["detail"]["image-digest"] for message in received)


def test_push_pattern_routes_only_successful_tagged_pushes_of_watched_repositories(aws_mock):
    rule = cfn.resource("EcrPushFunction")["Properties"]["Events"]["EcrPush"]["Properties"]
    pattern = cfn.resolve(rule["Pattern"], {"RepositoryNames": list(WATCHED)})
    samples = {path.stem: json.loads(path.read_text()) for path in sorted(EVENTS.glob("*.json"))}

    routed = delivered(pattern, list(samples.values()))

    # The signature push is tagged, so the rule passes it; the handler drops it by media type and tag filter.
    assert routed == sorted(
        [samples["push-tagged"]["detail"]["image-digest"], samples["push-signature"]["detail"]["image-digest"]]
    )
    assert samples["push-untagged"]["detail"]["image-digest"] not in routed


@pytest.mark.parametrize("name", ["RetryPolicy", "DeadLetterConfig"])
def test_push_rule_retries_and_dead_letters(name):
    rule = cfn.resource("EcrPushFunction")["Properties"]["Events"]["EcrPush"]["Properties"]
    assert rule[name]
