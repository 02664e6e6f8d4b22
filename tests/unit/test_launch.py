"""Node-launch pure logic (node verdict, backoff, outcome, event model, settings) and the AWS adapters it adds.

The adapters are tested with botocore's Stubber: it checks each request against the service model and answers
with a canned response, so these tests pin what is asked of EC2, SSM and SQS and how the answer is read. moto does
not implement ssm:DescribeInstanceInformation, which is why agent_online is only tested here.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities.parser import parse
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from pydantic import ValidationError

from eks_prefetch import aws
from eks_prefetch.events import Ec2StateChangeEvent
from eks_prefetch.node_contract import AUTO_MODE_NODE, auto_mode_reason
from eks_prefetch.prefetch import launch
from eks_prefetch.prefetch.launch import LaunchOutcome, NodeVerdict, backoff_seconds, classify_instance
from eks_prefetch.settings import LaunchSettings
from testing.environment import CLUSTER, DEPLOYMENT_ENV

EVENTS = Path(__file__).resolve().parents[2] / "events" / "node_launch"
NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
INSTANCE = "i-0abcdef1234567890"


def settings(**overrides: str) -> LaunchSettings:
    return LaunchSettings.from_env({**DEPLOYMENT_ENV, **overrides})


def instance(*, tags: dict[str, str] | None = None, state: str = "running", age_seconds: int = 0) -> dict[str, Any]:
    described: dict[str, Any] = {
        "InstanceId": INSTANCE,
        "State": {"Code": 16, "Name": state},
        "LaunchTime": NOW - timedelta(seconds=age_seconds),
    }
    if tags is not None:
        described["Tags"] = [{"Key": key, "Value": value} for key, value in tags.items()]
    return described


# --- which instances are nodes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("described", "verdict"),
    [
        (instance(tags={"eks:cluster-name": CLUSTER}), NodeVerdict.NODE),
        (instance(tags={"eks:cluster-name": CLUSTER}, age_seconds=86_400), NodeVerdict.NODE),
        (instance(tags={"eks:cluster-name": CLUSTER, "Name": "x"}, state="pending"), NodeVerdict.NODE),
        (instance(tags={"eks:cluster-name": "other"}), NodeVerdict.NOT_A_NODE),
        (instance(tags={"eks:cluster-name": ""}), NodeVerdict.NOT_A_NODE),
        (instance(tags={"Name": "web"}, age_seconds=10), NodeVerdict.TAGS_PENDING),
        (instance(tags=None, age_seconds=299), NodeVerdict.TAGS_PENDING),
        (instance(tags=None, age_seconds=300), NodeVerdict.NOT_A_NODE),
        (instance(tags={"Name": "web"}, age_seconds=3600), NodeVerdict.NOT_A_NODE),
        (instance(tags={"eks:cluster-name": CLUSTER}, state="terminated"), NodeVerdict.GONE),
        (instance(tags={"eks:cluster-name": CLUSTER}, state="shutting-down"), NodeVerdict.GONE),
        (instance(tags={"eks:cluster-name": CLUSTER}, state="stopped"), NodeVerdict.GONE),
        (instance(tags=None, state="stopping", age_seconds=5), NodeVerdict.GONE),
    ],
    ids=[
        "node",
        "old-node",
        "pending-node",
        "other-cluster",
        "empty-value",
        "young-untagged",
        "young-no-tags",
        "grace-ends",
        "old-untagged",
        "terminated",
        "shutting-down",
        "stopped",
        "stopping",
    ],
)
def test_classify_instance(described: dict[str, Any], verdict: NodeVerdict) -> None:
    assert classify_instance(described, settings(), NOW) is verdict


def test_classify_instance_uses_the_configured_tag_and_grace() -> None:
    karpenter = settings(
        NODE_TAG_KEY="kubernetes.io/cluster/ml-prod", NODE_TAG_VALUE="owned", NODE_TAG_GRACE_SECONDS="0"
    )

    assert (
        classify_instance(instance(tags={"kubernetes.io/cluster/ml-prod": "owned"}), karpenter, NOW) is NodeVerdict.NODE
    )
    assert classify_instance(instance(tags={"eks:cluster-name": CLUSTER}), karpenter, NOW) is NodeVerdict.NOT_A_NODE


# --- backoff and outcome --------------------------------------------------------------------------------------------


def test_backoff_polls_often_through_the_registration_window_then_doubles_and_is_capped() -> None:
    defaults = settings()

    assert [backoff_seconds(count, defaults) for count in range(1, 21)] == [10] * 14 + [20, 40, 80, 160, 300, 300]
    assert backoff_seconds(1000, defaults) == 300
    assert backoff_seconds(0, defaults) == 10


def test_one_fast_retry_is_plain_doubling_from_the_base() -> None:
    """The schedule before BENCHMARKS.md's tuning, which the benchmark measures as the baseline."""
    doubling = settings(
        NODE_LAUNCH_RETRY_BASE_SECONDS="15", NODE_LAUNCH_FAST_RETRIES="1", NODE_LAUNCH_RETRY_MAX_SECONDS="300"
    )

    assert [backoff_seconds(count, doubling) for count in range(1, 9)] == [15, 30, 60, 120, 240, 300, 300, 300]


def test_backoff_never_exceeds_the_sqs_visibility_limit() -> None:
    """SQS refuses a visibility above 12 hours; LaunchSettings is what keeps the backoff's cap within it."""
    wide = settings(NODE_LAUNCH_RETRY_BASE_SECONDS="43200", NODE_LAUNCH_RETRY_MAX_SECONDS="43200")

    assert backoff_seconds(5, wide) == 43_200
    with pytest.raises(ValidationError, match="NODE_LAUNCH_RETRY_MAX_SECONDS"):
        settings(NODE_LAUNCH_RETRY_MAX_SECONDS="43201")


def test_base_above_the_maximum_waits_the_maximum_and_says_so() -> None:
    """CloudFormation cannot compare two parameters: such a deployment works, with the conflict named."""
    inverted = settings(NODE_LAUNCH_RETRY_BASE_SECONDS="60", NODE_LAUNCH_RETRY_MAX_SECONDS="30")

    assert [backoff_seconds(count, inverted) for count in (1, 2, 5)] == [30, 30, 30]
    (conflict,) = inverted.conflicts()
    assert "NODE_LAUNCH_RETRY_BASE_SECONDS 60 exceeds NODE_LAUNCH_RETRY_MAX_SECONDS 30" in conflict


def test_default_budget_waits_about_fifty_minutes_for_the_agent() -> None:
    """The template's NodeLaunchMaxReceives description promises this; every attempt but the last waits."""
    defaults = settings()
    waited = sum(backoff_seconds(count, defaults) for count in range(1, defaults.node_launch_max_receives))

    assert defaults.node_launch_max_receives == 27
    assert 45 * 60 <= waited <= 55 * 60


def test_outcome_reports_failure_only_for_retry_and_give_up() -> None:
    assert LaunchOutcome(status="retry").failed
    assert LaunchOutcome(status="gave_up").failed
    for status in ("sent", "duplicate", "ignored"):
        assert not LaunchOutcome(status=status).failed


def test_outcome_as_dict_drops_empty_fields() -> None:
    outcome = LaunchOutcome(status="sent", instance_id=INSTANCE, images=("a", "b"), command_ids=("c-1",))

    assert outcome.as_dict() == {
        "status": "sent",
        "instance_id": INSTANCE,
        "images": ["a", "b"],
        "command_ids": ["c-1"],
    }
    json.dumps(outcome.as_dict())


# --- settings --------------------------------------------------------------------------------------------------------


def test_node_launch_settings_defaults_and_overrides() -> None:
    defaults = settings()
    assert (defaults.node_launch_max_receives, defaults.node_tag_grace_seconds) == (27, 300)
    assert (defaults.node_launch_retry_base_seconds, defaults.node_launch_retry_max_seconds) == (10, 300)
    assert defaults.node_launch_fast_retries == 14

    custom = settings(NODE_LAUNCH_MAX_RECEIVES="30", NODE_TAG_GRACE_SECONDS="0")
    assert (custom.node_launch_max_receives, custom.node_tag_grace_seconds) == (30, 0)


@pytest.mark.parametrize(
    "overrides",
    [
        {"NODE_LAUNCH_MAX_RECEIVES": "0"},
        {"NODE_LAUNCH_MAX_RECEIVES": "1001"},
        {"NODE_TAG_GRACE_SECONDS": "-1"},
        {"NODE_LAUNCH_RETRY_BASE_SECONDS": "0"},
        {"NODE_LAUNCH_RETRY_MAX_SECONDS": "43201"},
        {"NODE_LAUNCH_FAST_RETRIES": "0"},
    ],
)
def test_node_launch_settings_are_validated(overrides: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        settings(**overrides)


# --- the event model -------------------------------------------------------------------------------------------------


def sample() -> dict[str, Any]:
    return json.loads((EVENTS / "eventbridge-ec2-running.json").read_text())


def test_sample_events_parse() -> None:
    event = parse(event=sample(), model=Ec2StateChangeEvent)
    assert (event.detail.instance_id, event.detail.state) == (INSTANCE, "running")
    assert event.time == datetime(2026, 11, 1, 12, 0, tzinfo=UTC)

    (record,) = json.loads((EVENTS / "sqs-ec2-running.json").read_text())["Records"]
    assert parse(event=record["body"], model=Ec2StateChangeEvent) == event


def test_event_model_tolerates_new_detail_fields() -> None:
    event = sample()
    event["detail"]["some-future-field"] = {"x": 1}

    assert parse(event=event, model=Ec2StateChangeEvent).detail.state == "running"


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("detail", "state"), "rebooting"),
        (("detail", "instance-id"), "i-123"),
        (("detail", "instance-id"), "vol-0abcdef1234567890"),
        (("source",), "aws.autoscaling"),
        (("detail-type",), "EC2 Spot Instance Interruption Warning"),
        (("time",), "yesterday"),
    ],
)
def test_event_model_rejects_unexpected_values(path: tuple[str, ...], value: str) -> None:
    event = sample()
    target = event
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value

    with pytest.raises(ValidationError):
        parse(event=event, model=Ec2StateChangeEvent)


def test_event_model_rejects_a_missing_instance_id() -> None:
    event = sample()
    del event["detail"]["instance-id"]

    with pytest.raises(ValidationError):
        parse(event=event, model=Ec2StateChangeEvent)


# --- adapters ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def ssm(deployment_env: dict[str, str]) -> Any:
    return boto3.client("ssm")


def info(instance_id: str, ping: str) -> dict[str, Any]:
    return {"InstanceId": instance_id, "PingStatus": ping}


@pytest.mark.parametrize(
    ("listing", "online"),
    [
        ([info(INSTANCE, "Online")], True),
        ([info(INSTANCE, "ConnectionLost")], False),
        ([info(INSTANCE, "Inactive")], False),
        ([], False),
        ([info("i-0fffffffffffffff0", "Online")], False),
    ],
    ids=["online", "connection-lost", "inactive", "not-registered", "another-instance"],
)
def test_agent_online_asks_for_the_one_instance_and_reads_its_ping_status(
    ssm: Any, listing: list[dict[str, Any]], online: bool
) -> None:
    with Stubber(ssm) as stubber:
        stubber.add_response(
            "describe_instance_information",
            {"InstanceInformationList": listing},
            {"Filters": [{"Key": "InstanceIds", "Values": [INSTANCE]}]},
        )
        assert aws.ssm.agent_online(INSTANCE, ssm=ssm) is online
        stubber.assert_no_pending_responses()


def test_agent_online_treats_an_unknown_instance_as_not_registered(ssm: Any) -> None:
    with Stubber(ssm) as stubber:
        stubber.add_client_error("describe_instance_information", service_error_code="InvalidInstanceId")
        assert aws.ssm.agent_online(INSTANCE, ssm=ssm) is False


def test_agent_online_propagates_other_errors(ssm: Any) -> None:
    with Stubber(ssm) as stubber:
        stubber.add_client_error("describe_instance_information", service_error_code="ThrottlingException")
        with pytest.raises(ClientError, match="ThrottlingException"):
            aws.ssm.agent_online(INSTANCE, ssm=ssm)


def test_describe_instance_returns_the_instance_or_none(deployment_env: dict[str, str]) -> None:
    ec2 = boto3.client("ec2")
    described = instance(tags={"eks:cluster-name": CLUSTER})
    with Stubber(ec2) as stubber:
        stubber.add_response(
            "describe_instances",
            {"Reservations": [{"Instances": [described]}]},
            {"InstanceIds": [INSTANCE]},
        )
        stubber.add_client_error("describe_instances", service_error_code="InvalidInstanceID.NotFound")
        stubber.add_client_error("describe_instances", service_error_code="UnauthorizedOperation")

        assert aws.ec2.describe_instance(INSTANCE, ec2=ec2)["LaunchTime"] == described["LaunchTime"]
        assert aws.ec2.describe_instance(INSTANCE, ec2=ec2) is None
        with pytest.raises(ClientError, match="UnauthorizedOperation"):
            aws.ec2.describe_instance(INSTANCE, ec2=ec2)


@pytest.mark.parametrize(
    ("arn", "url"),
    [
        (
            "arn:aws:sqs:us-east-1:123456789012:eks-image-prefetch-NodeLaunchQueue-AbC",
            "https://sqs.us-east-1.amazonaws.com/123456789012/eks-image-prefetch-NodeLaunchQueue-AbC",
        ),
        (
            "arn:aws-cn:sqs:cn-north-1:123456789012:q",
            "https://sqs.cn-north-1.amazonaws.com.cn/123456789012/q",
        ),
    ],
)
def test_queue_url_from_arn(arn: str, url: str) -> None:
    assert aws.sqs.queue_url(arn) == url


def test_change_visibility_request(deployment_env: dict[str, str]) -> None:
    sqs = boto3.client("sqs")
    with Stubber(sqs) as stubber:
        stubber.add_response(
            "change_message_visibility",
            {},
            {
                "QueueUrl": "https://sqs.us-east-1.amazonaws.com/123456789012/q",
                "ReceiptHandle": "receipt-1",
                "VisibilityTimeout": 60,
            },
        )
        aws.sqs.change_visibility("arn:aws:sqs:us-east-1:123456789012:q", "receipt-1", 60, sqs=sqs)
        stubber.assert_no_pending_responses()


def test_newest_images_are_resolved_once_per_batch_and_never_reused_by_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    listings: list[str] = []

    def describe_tagged_images(repository: str) -> list[dict[str, Any]]:
        listings.append(repository)
        return [
            {
                "imageDigest": "sha256:" + f"{len(listings):064x}",
                "imageTags": ["v1"],
                "imagePushedAt": datetime(2026, 1, 1, tzinfo=UTC),
                "registryId": "123456789012",
                "repositoryName": repository,
                "imageManifestMediaType": "application/vnd.oci.image.manifest.v1+json",
            }
        ]

    monkeypatch.setattr(aws.ecr, "describe_tagged_images", describe_tagged_images)
    current = settings()

    batch = launch.LaunchBatch.of([], current)
    first = batch.newest.every_repository()
    same_batch = batch.newest.every_repository()
    next_batch = launch.LaunchBatch.of([], current).newest.every_repository()

    assert first == same_batch
    assert first != next_batch
    assert listings == list(current.repository_names) * 2


@pytest.mark.parametrize(
    ("described", "auto_mode"),
    [
        # EC2's own word: a managed instance, operated by EKS.
        ({"Operator": {"Managed": True, "Principal": "eks.amazonaws.com"}, "Tags": []}, True),
        # The tags Auto Mode launches its instances with.
        ({"Tags": [{"Key": "eks:kubernetes-node-class-name", "Value": "default"}]}, True),
        # A managed instance of another service (Lambda Managed Instances), or none.
        ({"Operator": {"Managed": True, "Principal": "scaler.lambda.amazonaws.com"}}, False),
        ({"Operator": {"Managed": False}, "Tags": [{"Key": "karpenter.sh/nodepool", "Value": "general"}]}, False),
        ({}, False),
    ],
)
def test_eks_auto_mode_instances_are_told_from_what_ec2_says(described: dict[str, Any], auto_mode: bool) -> None:
    assert (auto_mode_reason(described) == AUTO_MODE_NODE) is auto_mode
