"""The status rule of template.yaml, evaluated by moto's EventBridge (harness/routing.py): which SSM events reach the
function. The pattern is read from template.yaml with !Ref PrefetchDocument resolved to the test deployment's name.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from aws_lambda_powertools.utilities.parser import parse

from eks_prefetch.events import ScheduledEvent, SsmInvocationStatusEvent
from harness import template as cfn
from harness.routing import routed_events
from testing.environment import DOCUMENT

EVENTS = Path(__file__).resolve().parents[2] / "events" / "status"
FINAL = ["Success", "Failed", "Cancelled", "TimedOut", "DeliveryTimedOut", "ExecutionTimedOut", "Undeliverable"]
NOT_FINAL = ["Pending", "InProgress", "Delayed", "Cancelling"]


def pattern() -> dict:
    rule = cfn.resource("StatusFunction")["Properties"]["Events"]["InvocationStatus"]["Properties"]
    return cfn.resolve(rule["Pattern"], {"PrefetchDocument": DOCUMENT})


def sample(name: str) -> dict:
    return json.loads((EVENTS / f"{name}.json").read_text())


def variant(status: str, document: str = DOCUMENT, source: str = "aws.ssm") -> dict:
    event = copy.deepcopy(sample("invocation-success"))
    event["source"] = source
    event["detail"]["status"] = status
    event["detail"]["document-name"] = document
    return event


def test_only_final_statuses_of_our_document_are_routed(aws_mock):
    candidates = [variant(status) for status in FINAL + NOT_FINAL]
    candidates += [variant("Success", document="AWS-RunShellScript"), variant("Failed", document=DOCUMENT + "-2")]
    candidates += [variant("Success", source="custom.app")]

    routed = routed_events(pattern(), candidates)

    assert sorted((e["detail"]["document-name"], e["detail"]["status"]) for e in routed) == sorted(
        (DOCUMENT, status) for status in FINAL
    )


@pytest.mark.parametrize(
    ("name", "routed"),
    [
        ("invocation-success", True),
        ("invocation-failed", True),
        ("invocation-other-document", False),
        ("invocation-in-progress", False),
    ],
)
def test_sample_events(aws_mock, name, routed):
    event = sample(name)
    delivered = routed_events(pattern(), [event])

    assert len(delivered) == (1 if routed else 0)
    # Every sample parses as what the function expects (moto leaves "account" out of what it delivers).
    assert parse(event=event, model=SsmInvocationStatusEvent).detail.command_id == event["detail"]["command-id"]


def test_scheduled_sample_parses_as_the_sweep():
    assert parse(event=sample("scheduled-sweep"), model=ScheduledEvent).detail_type == "Scheduled Event"
