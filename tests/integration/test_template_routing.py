"""The template's EventBridge pattern for pushes, evaluated by moto's EventBridge on the sample events.

The pattern is read from template.yaml (with !Ref RepositoryNames resolved), put on a rule that targets an SQS
queue, and the samples in events/ecr_push are sent through it.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness import template as cfn
from harness.routing import routed_events
from testing.environment import WATCHED

EVENTS = Path(__file__).resolve().parents[2] / "events" / "ecr_push"


def test_push_pattern_routes_only_successful_tagged_pushes_of_watched_repositories(aws_mock):
    rule = cfn.resource("EcrPushFunction")["Properties"]["Events"]["EcrPush"]["Properties"]
    pattern = cfn.resolve(rule["Pattern"], {"RepositoryNames": list(WATCHED)})
    samples = {path.stem: json.loads(path.read_text()) for path in sorted(EVENTS.glob("*.json"))}

    routed = sorted(event["detail"]["image-digest"] for event in routed_events(pattern, list(samples.values())))

    # The signature push is tagged, so the rule passes it; the handler drops it by media type and tag filter.
    assert routed == sorted(
        [samples["push-tagged"]["detail"]["image-digest"], samples["push-signature"]["detail"]["image-digest"]]
    )
    assert samples["push-untagged"]["detail"]["image-digest"] not in routed


def test_push_rule_retries_and_dead_letters():
    """EventBridge retries a failed delivery to the function for an hour, then dead-letters it; the function's own
    async retries (after an error) end in the same queue. Values, not presence: 0 retries would lose pushes."""
    function = cfn.resource("EcrPushFunction")["Properties"]
    rule = function["Events"]["EcrPush"]["Properties"]

    assert rule["RetryPolicy"] == {"MaximumRetryAttempts": 8, "MaximumEventAgeInSeconds": 3600}
    assert rule["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": ["PushDeadLetterQueue", "Arn"]}}
    invoke = function["EventInvokeConfig"]
    assert invoke["MaximumRetryAttempts"] == 2
    assert invoke["MaximumEventAgeInSeconds"] == 3600
    assert invoke["DestinationConfig"]["OnFailure"] == {
        "Type": "SQS",
        "Destination": {"Fn::GetAtt": ["PushDeadLetterQueue", "Arn"]},
    }
