"""The template's node-launch rule, evaluated by moto's EventBridge: which EC2 events reach the queue, and as what.

The pattern is read from template.yaml, put on a rule that targets an SQS queue, and EC2 events are sent through it.
The queue's message body is the event itself, which is what the function parses.
"""

from __future__ import annotations

import json
from pathlib import Path

from aws_lambda_powertools.utilities.parser import parse

from eks_prefetch.events import Ec2StateChangeEvent
from harness import template as cfn
from harness.routing import routed_events

SAMPLE = Path(__file__).resolve().parents[2] / "events" / "node_launch" / "eventbridge-ec2-running.json"


def test_rule_routes_only_running_instances_and_the_body_is_the_event(aws_mock):
    pattern = cfn.resource("NodeLaunchRule")["Properties"]["EventPattern"]
    sample = json.loads(SAMPLE.read_text())
    sent = {
        "i-00000000000000001": ("aws.ec2", "EC2 Instance State-change Notification", "running"),
        "i-00000000000000002": ("aws.ec2", "EC2 Instance State-change Notification", "pending"),
        "i-00000000000000003": ("aws.ec2", "EC2 Instance State-change Notification", "stopped"),
        "i-00000000000000004": ("aws.ec2", "EC2 Instance State-change Notification", "terminated"),
        "i-00000000000000005": ("aws.ec2", "EC2 Spot Instance Interruption Warning", "running"),
        "i-00000000000000006": ("custom.app", "EC2 Instance State-change Notification", "running"),
    }
    candidates = [
        {
            "source": source,
            "detail-type": detail_type,
            "detail": {**sample["detail"], "instance-id": instance_id, "state": state},
            "resources": [f"arn:aws:ec2:us-east-1:123456789012:instance/{instance_id}"],
        }
        for instance_id, (source, detail_type, state) in sent.items()
    ]

    bodies = routed_events(pattern, candidates)
    # moto's EventBridge leaves "account" out of what it delivers to SQS; EventBridge always sets it.
    assert all("account" not in body for body in bodies)
    parsed = [parse(event={**body, "account": "123456789012"}, model=Ec2StateChangeEvent) for body in bodies]
    assert [(event.detail.instance_id, event.detail.state) for event in parsed] == [("i-00000000000000001", "running")]
