"""The node-launch handler against moto: EC2 instances and tags, ECR images, DynamoDB idempotency and a real SQS
queue with a redrive policy, driven the way the Lambda event source mapping drives it (receive a batch, invoke,
delete what did not fail).

Test doubles (the ``testing`` package), and why:
- moto does not implement ssm:DescribeInstanceInformation, so the SSM agent's registration state is ``Agents``
  (testing/ssm.py), which answers it at botocore's level as the test says and counts how often a node is asked
  about; the adapter ``aws.ssm.agent_online`` runs unchanged.
- The queue is a moto queue with the template's redrive, driven as Lambda's event source mapping drives it
  (testing/sqs.py ``LaunchQueue``).
- moto accepts every SendCommand parameter unvalidated and targets every instance when given InstanceIds, so the
  tests capture the SendCommand request the code hands to botocore and assert on that.
- moto keeps LaunchTime on stop/start; the tests set it on moto's instance to stand for a restart.
- "Time passing" is the test making the in-flight message visible again: the visibility the function asked for is
  asserted from the ChangeMessageVisibility requests it made and from the queue's not-visible count.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyAlreadyInProgressError
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from moto.core.exceptions import ServiceException
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models import ec2_backends
from moto.ssm.models import ssm_backends

from eks_prefetch import aws
from eks_prefetch.images import ResolvedImage
from eks_prefetch.node_contract import AUTO_MODE_NODE, AUTO_MODE_TAG
from eks_prefetch.node_output import repository_of
from eks_prefetch.prefetch import sending
from eks_prefetch.prefetch.commands import send_command_request, with_comment_marker
from eks_prefetch.prefetch.sending import event_marker
from eks_prefetch.settings import LaunchSettings, load
from testing.deployment import idempotency_records, load_handler
from testing.ec2 import NODE_TAGS, launch_time_of, run_instance, set_launch_time
from testing.ecr import at, create_repository, push_image
from testing.environment import ACCOUNT, CLUSTER, DOCUMENT, LOG_GROUP, REGION, REGISTRY
from testing.events import running_event
from testing.sqs import LaunchQueue
from testing.ssm import Agents
from tests.faults import lose_replies, reset_first_connection, throttle_first

EVENTS = Path(__file__).resolve().parents[2] / "events" / "node_launch"
MAX_RECEIVES = 4


# --- helpers ---------------------------------------------------------------------------------------------------------


def launch_ready_node(queue: LaunchQueue, agents: Agents) -> str:
    """A new cluster node whose SSM agent is Online, its launch event on the queue."""
    instance = run_instance(NODE_TAGS)
    agents.online.add(instance)
    queue.publish(running_event(instance))
    return instance


def images_of(request: dict[str, Any]) -> list[str]:
    (images,) = request["Parameters"]["images"]
    return images.split(",")


def commands() -> list[dict[str, Any]]:
    """The commands moto recorded."""
    return boto3.client("ssm").list_commands()["Commands"]


def giving_up_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.getMessage().startswith("giving up:")]


# --- fixtures ------------------------------------------------------------------------------------------------------


@pytest.fixture
def env(deployment_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_LAUNCH_MAX_RECEIVES", str(MAX_RECEIVES))
    monkeypatch.setenv("NODE_TAG_GRACE_SECONDS", "300")
    monkeypatch.setenv("NODE_LAUNCH_RETRY_BASE_SECONDS", "15")
    # Doubling from the first retry, so that a few deliveries reach the cap (the unit tests cover the fast retries).
    monkeypatch.setenv("NODE_LAUNCH_FAST_RETRIES", "1")
    monkeypatch.setenv("NODE_LAUNCH_RETRY_MAX_SECONDS", "40")
    load.cache_clear()


@pytest.fixture
def visibility(aws_mock: None) -> list[int]:
    """The VisibilityTimeout of every ChangeMessageVisibility the function made."""
    timeouts: list[int] = []

    def capture(params: dict[str, Any], **_: Any) -> None:
        timeouts.append(params["VisibilityTimeout"])

    aws.client("sqs").meta.events.register("provide-client-params.sqs.ChangeMessageVisibility", capture)
    return timeouts


@pytest.fixture
def ec2_calls(aws_mock: None) -> list[str]:
    calls: list[str] = []

    def described(params: dict[str, Any], **_: Any) -> None:
        # One instance by id, or a batch's by the instance-id filter.
        ids = params.get("InstanceIds") or [v for f in params.get("Filters", []) for v in f["Values"]]
        calls.extend(ids)

    aws.client("ec2").meta.events.register("provide-client-params.ec2.DescribeInstances", described)
    return calls


@pytest.fixture
def images(aws_mock: None) -> dict[str, str]:
    """Both watched repositories with an older and a newer image; returns the newest digest of each."""
    create_repository("ml/trainer")
    create_repository("ml/inference")
    push_image("ml/trainer", "trainer-1", tag="v1", pushed_at=at(1))
    push_image("ml/inference", "inference-1", tag="v1", pushed_at=at(2))
    return {
        "ml/trainer": push_image("ml/trainer", "trainer-2", tag="v2", pushed_at=at(3)),
        "ml/inference": push_image("ml/inference", "inference-2", tag="v2", pushed_at=at(4)),
    }


@pytest.fixture
def queue(env: None, aws_mock: None, lambda_context: Any) -> LaunchQueue:
    return LaunchQueue(load_handler("node_launch").lambda_handler, lambda_context, MAX_RECEIVES)


# --- the command -----------------------------------------------------------------------------------------------------


def test_ready_node_gets_one_command_with_the_newest_image_of_every_repository(queue, agents, sent, images):
    instance = launch_ready_node(queue, agents)

    response = queue.deliver()

    assert response == {"batchItemFailures": []}
    (request,) = sent
    assert request["InstanceIds"] == [instance]
    assert "Targets" not in request
    assert request["DocumentName"] == DOCUMENT
    assert request["DocumentVersion"] == "1"
    # The two images' sizes (moto's 7 kB each) over the budget: one node either way.
    assert request["MaxConcurrency"] == "178051"
    assert request["MaxErrors"] == "25%"
    assert request["TimeoutSeconds"] == 600
    assert request["CloudWatchOutputConfig"] == {"CloudWatchLogGroupName": LOG_GROUP, "CloudWatchOutputEnabled": True}
    assert images_of(request) == [
        f"{REGISTRY}/ml/trainer:v2@{images['ml/trainer']}",
        f"{REGISTRY}/ml/inference:v2@{images['ml/inference']}",
    ]
    assert request["Parameters"]["pin"] == ["true"]
    # The very builder the push path uses: same document, parameters and safety settings.
    settings = load(LaunchSettings)
    newest = [
        ResolvedImage(REGISTRY, "ml/trainer", images["ml/trainer"], "v2", at(3), size_bytes=7023),
        ResolvedImage(REGISTRY, "ml/inference", images["ml/inference"], "v2", at(4), size_bytes=7023),
    ]
    key = {"instance": instance, "launch_time": launch_time_of(instance)}
    launched = datetime.fromisoformat(launch_time_of(instance))
    assert request == with_comment_marker(
        send_command_request(newest, settings, instance_ids=[instance], new_node=True, launched=launched),
        event_marker(key),
    )
    # Marked as the new-node path's, with the launch: the status function measures LaunchToCachedSeconds from these
    # commands only, from the launch time they carry.
    stamp = launched.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    assert request["Comment"].startswith(f"new node launched {stamp}: prefetch ml/trainer:v2")
    # moto's record of the command, and an acknowledged (deleted) message.
    (command,) = commands()
    assert command["InstanceIds"] == [instance]
    assert queue.counts() == {"visible": 0, "hidden": 0}
    assert queue.dead_letters() == []


def test_several_repositories_one_empty_one_deleted_still_send_the_others(queue, agents, sent, monkeypatch, caplog):
    monkeypatch.setenv("REPOSITORY_NAMES", "ml/trainer,ml/empty,ml/deleted,ml/inference")
    load.cache_clear()
    for name in ("ml/trainer", "ml/empty", "ml/deleted", "ml/inference"):
        create_repository(name)
    boto3.client("ecr").delete_repository(repositoryName="ml/deleted", force=True)
    push_image("ml/trainer", "t-old", tag="v1", pushed_at=at(1))
    trainer = push_image("ml/trainer", "t-new", tag="v2", pushed_at=at(5))
    push_image("ml/trainer", "t-untagged", tag=None, pushed_at=at(9))  # newer, but untagged: never prefetched
    inference = push_image("ml/inference", "i-1", tag="v7", pushed_at=at(2))
    launch_ready_node(queue, agents)

    assert queue.deliver() == {"batchItemFailures": []}

    (request,) = sent
    assert images_of(request) == [f"{REGISTRY}/ml/trainer:v2@{trainer}", f"{REGISTRY}/ml/inference:v7@{inference}"]
    warnings = [record for record in caplog.records if record.getMessage() == "watched repository does not exist"]
    assert [record.repository for record in warnings] == ["ml/deleted"]
    empty = [record for record in caplog.records if record.getMessage() == "no tagged image matches the filter"]
    assert [record.repository for record in empty] == ["ml/empty"]


def test_a_burst_of_new_nodes_resolves_each_repository_once(queue, agents, sent, images):
    """A node group scaling out: eight launches in one batch cost one DescribeImages per repository, not per node."""
    describes: list[str] = []
    aws.client("ecr").meta.events.register(
        "provide-client-params.ecr.DescribeImages", lambda params, **_: describes.append(params["repositoryName"])
    )
    instances = [launch_ready_node(queue, agents) for _ in range(8)]

    assert queue.deliver() == {"batchItemFailures": []}

    assert sorted(describes) == ["ml/inference", "ml/trainer"]
    assert sorted(request["InstanceIds"][0] for request in sent) == sorted(instances)
    expected = [
        f"{REGISTRY}/ml/trainer:v2@{images['ml/trainer']}",
        f"{REGISTRY}/ml/inference:v2@{images['ml/inference']}",
    ]
    assert all(images_of(request) == expected for request in sent)


def test_no_image_in_any_repository_sends_nothing_and_acknowledges(queue, agents, sent, caplog):
    create_repository("ml/trainer")  # empty; ml/inference does not exist
    launch_ready_node(queue, agents)

    assert queue.deliver() == {"batchItemFailures": []}

    assert sent == []
    assert queue.counts() == {"visible": 0, "hidden": 0}
    ignored = [record for record in caplog.records if record.getMessage() == "launch ignored"]
    assert [record.reason for record in ignored] == ["no image to prefetch in any watched repository"]


# --- waiting for the node --------------------------------------------------------------------------------------------


def test_untagged_young_instance_is_retried_then_prefetched_once_tagged(queue, agents, sent, visibility, images):
    instance = run_instance({"Name": "worker"})  # the autoscaling group's tags have not landed yet
    agents.online.add(instance)
    queue.publish(running_event(instance))

    response = queue.deliver()

    assert len(response["batchItemFailures"]) == 1
    assert sent == []
    assert visibility == [15]
    assert queue.counts() == {"visible": 0, "hidden": 1}
    assert agents.asked == []  # no point asking SSM about an instance that may not be ours

    boto3.client("ec2").create_tags(Resources=[instance], Tags=[{"Key": "eks:cluster-name", "Value": CLUSTER}])
    assert queue.deliver() == {"batchItemFailures": []}

    (request,) = sent
    assert request["InstanceIds"] == [instance]
    assert len(images_of(request)) == 2
    assert queue.counts() == {"visible": 0, "hidden": 0}


def test_agent_registering_after_retries_gets_exactly_one_command_after_registration(
    queue, agents, sent, visibility, images
):
    instance = run_instance(NODE_TAGS)
    agents.online_after[instance] = 3
    queue.publish(running_event(instance))

    for attempt in range(1, 4):
        response = queue.deliver()
        assert len(response["batchItemFailures"]) == 1, attempt
        assert sent == [], f"no command before the agent registers (attempt {attempt})"
        assert queue.counts() == {"visible": 0, "hidden": 1}

    # Backoff through the queue, doubling from the base and capped (base 15, cap 40 in this deployment).
    assert visibility == [15, 30, 40]
    assert queue.deliver() == {"batchItemFailures": []}

    assert len(sent) == 1
    assert sent[0]["InstanceIds"] == [instance]
    assert agents.asked == [instance] * 4
    assert queue.counts() == {"visible": 0, "hidden": 0}
    assert queue.deliver() is None
    assert queue.dead_letters() == []


def test_agent_never_registering_ends_in_the_dead_letter_queue_with_the_reason(
    queue, agents, sent, visibility, images, caplog
):
    instance = run_instance(NODE_TAGS)
    event = running_event(instance)
    queue.publish(event)

    for _ in range(MAX_RECEIVES):
        response = queue.deliver()
        assert len(response["batchItemFailures"]) == 1

    # Backoff on every attempt but the last: that one leaves the message to the redrive policy.
    assert visibility == [15, 30, 40]
    (line,) = giving_up_lines(caplog)
    assert line.levelno == logging.ERROR
    assert line.getMessage().startswith(f"giving up: SSM agent not online after {MAX_RECEIVES} attempts / ")
    assert line.getMessage().endswith(" seconds")
    assert line.instance_id == instance
    assert sent == []

    # SQS moves it to the dead-letter queue on the next receive.
    assert queue.deliver() is None
    assert [json.loads(body) for body in queue.dead_letters()] == [event]
    assert len(giving_up_lines(caplog)) == 1


def test_agent_online_but_send_command_still_rejects_the_instance_is_retried(
    queue, agents, sent, visibility, images, monkeypatch
):
    """Registration and SendCommand's view of it are not atomic: InvalidInstanceId means "not yet"."""

    class InvalidInstanceId(ServiceException):
        code = "InvalidInstanceId"
        message = "Instances not in a valid state for account"

    backend = ssm_backends[ACCOUNT][REGION]
    real = backend.send_command
    answers = iter([InvalidInstanceId()])

    def send_command(*args: Any, **kwargs: Any) -> Any:
        error = next(answers, None)
        if error:
            raise error
        return real(*args, **kwargs)

    # On the instance: moto discards the backend when the mock ends.
    backend.send_command = send_command
    launch_ready_node(queue, agents)

    assert len(queue.deliver()["batchItemFailures"]) == 1
    assert visibility == [15]
    assert commands() == []
    # The failed send left no idempotency record, so the retry sends.
    assert queue.deliver() == {"batchItemFailures": []}
    assert len(commands()) == 1
    assert len(sent) == 2


# --- not ours, gone, or nothing to do --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tags", "age", "reason"),
    [
        ({"eks:cluster-name": "another-cluster"}, timedelta(0), "not a cluster node"),
        ({"Name": "bastion"}, timedelta(minutes=10), "not a cluster node"),
        (None, timedelta(hours=3), "not a cluster node"),
    ],
    ids=["other-cluster", "untagged-past-grace", "no-tags-at-all"],
)
def test_instance_that_is_not_a_cluster_node_is_acknowledged_quietly(
    queue, agents, sent, visibility, ec2_calls, images, caplog, tags, age, reason
):
    caplog.set_level(logging.INFO)
    instance = run_instance(tags)
    set_launch_time(instance, datetime.now(UTC) - age)
    queue.publish(running_event(instance))

    assert queue.deliver() == {"batchItemFailures": []}

    assert sent == []
    assert visibility == []
    assert agents.asked == []
    assert ec2_calls == [instance]
    assert queue.counts() == {"visible": 0, "hidden": 0}
    # Quietly: nothing at INFO or above about it.
    assert not [record for record in caplog.records if getattr(record, "instance_id", None) == instance]


@pytest.mark.parametrize("action", ["terminate", "stop", "unknown"])
def test_instance_gone_or_unknown_is_acknowledged(queue, agents, sent, visibility, images, action):
    ec2 = boto3.client("ec2")
    instance = run_instance(NODE_TAGS)
    if action == "terminate":
        ec2.terminate_instances(InstanceIds=[instance])
    elif action == "stop":
        ec2.stop_instances(InstanceIds=[instance])
    else:
        instance = "i-0123456789abcdef0"  # InvalidInstanceID.NotFound
    queue.publish(running_event(instance))

    assert queue.deliver() == {"batchItemFailures": []}

    assert sent == []
    assert visibility == []
    assert agents.asked == []
    assert queue.counts() == {"visible": 0, "hidden": 0}


# --- duplicates and restarts -----------------------------------------------------------------------------------------


def test_duplicate_events_send_one_command(queue, agents, sent, images):
    instance = run_instance(NODE_TAGS)
    agents.online.add(instance)
    event = running_event(instance)
    queue.publish(event)
    queue.publish(event)  # EventBridge delivers at least once
    queue.publish(running_event(instance))  # another event id, the same launch

    assert queue.deliver() == {"batchItemFailures": []}
    assert queue.deliver() is None

    assert len(sent) == 1
    assert len(commands()) == 1
    records = idempotency_records()
    assert len(records) == 1
    assert records[0]["status"]["S"] == "COMPLETED"


def test_stop_start_sends_a_harmless_second_command_without_failing(queue, agents, sent, images):
    ec2 = boto3.client("ec2")
    instance = run_instance(NODE_TAGS)
    agents.online.add(instance)
    first_launch = datetime.now(UTC) - timedelta(hours=2)
    set_launch_time(instance, first_launch)
    queue.publish(running_event(instance))
    assert queue.deliver() == {"batchItemFailures": []}

    ec2.stop_instances(InstanceIds=[instance])
    ec2.start_instances(InstanceIds=[instance])
    set_launch_time(instance, datetime.now(UTC))
    queue.publish(running_event(instance))
    assert queue.deliver() == {"batchItemFailures": []}

    assert [request["InstanceIds"] for request in sent] == [[instance], [instance]]
    assert images_of(sent[0]) == images_of(sent[1])
    assert queue.counts() == {"visible": 0, "hidden": 0}
    assert queue.dead_letters() == []
    assert len(idempotency_records()) == 2


# --- events that cannot be handled ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        json.dumps({"source": "aws.ec2", "detail-type": "EC2 Instance State-change Notification"}),
        "STATE:rebooting",
        "INSTANCE:vol-0123456789abcdef0",
        "SOURCE:aws.autoscaling",
    ],
    ids=["not-json", "no-detail", "unknown-state", "not-an-instance-id", "other-source"],
)
def test_malformed_or_unexpected_event_is_logged_and_acknowledged(queue, agents, sent, ec2_calls, caplog, body):
    event = running_event("i-0abcdef1234567890")
    if body.startswith("STATE:"):
        event["detail"]["state"] = body.removeprefix("STATE:")
        body = json.dumps(event)
    elif body.startswith("INSTANCE:"):
        event["detail"]["instance-id"] = body.removeprefix("INSTANCE:")
        body = json.dumps(event)
    elif body.startswith("SOURCE:"):
        event["source"] = body.removeprefix("SOURCE:")
        body = json.dumps(event)
    queue.publish(body)

    assert queue.deliver() == {"batchItemFailures": []}

    assert ec2_calls == []
    assert sent == []
    assert queue.counts() == {"visible": 0, "hidden": 0}
    dropped = [record for record in caplog.records if record.getMessage() == "malformed EC2 event dropped"]
    assert len(dropped) == 1
    assert dropped[0].levelno == logging.WARNING


def test_non_running_state_is_acknowledged_without_calls(queue, agents, sent, ec2_calls):
    queue.publish(running_event(run_instance(NODE_TAGS), state="stopped"))

    assert queue.deliver() == {"batchItemFailures": []}

    assert ec2_calls == []
    assert sent == []
    assert queue.counts() == {"visible": 0, "hidden": 0}


def test_a_batch_fails_only_the_records_that_are_not_ready(queue, agents, sent, images):
    ready, registering = run_instance(NODE_TAGS), run_instance(NODE_TAGS)
    agents.online.add(ready)
    queue.publish(running_event(ready))
    queue.publish(running_event(registering))
    queue.publish("garbage")

    response = queue.deliver()

    assert len(response["batchItemFailures"]) == 1
    assert [request["InstanceIds"] for request in sent] == [[ready]]
    assert queue.counts() == {"visible": 0, "hidden": 1}
    agents.online.add(registering)
    assert queue.deliver() == {"batchItemFailures": []}
    assert [request["InstanceIds"] for request in sent] == [[ready], [registering]]


# --- throttling -----------------------------------------------------------------------------------------------------


def test_ec2_throttling_is_retried_by_botocore(queue, agents, sent, images, monkeypatch):
    backend = ec2_backends[ACCOUNT][REGION]
    # The batch's look-ahead describes by the instance-id filter (moto's describe_instances).
    real = backend.describe_instances
    calls: list[str] = []

    def throttled(*args: Any, **kwargs: Any) -> Any:
        calls.append("DescribeInstances")
        if len(calls) <= 2:
            raise EC2ClientError("RequestLimitExceeded", "Request limit exceeded.")
        return real(*args, **kwargs)

    backend.describe_instances = throttled
    instance = launch_ready_node(queue, agents)

    assert queue.deliver() == {"batchItemFailures": []}

    assert len(calls) == 3  # two throttled, then answered: inside one invocation, by botocore
    assert [request["InstanceIds"] for request in sent] == [[instance]]


def test_ssm_throttling_is_retried_by_botocore(queue, agents, sent, images, monkeypatch):
    calls = throttle_first(ssm_backends[ACCOUNT][REGION], "send_command", 2)
    launch_ready_node(queue, agents)

    assert queue.deliver() == {"batchItemFailures": []}

    assert len(calls) == 3
    assert len(sent) == 1  # one request from the code; the retries are botocore's
    assert len(commands()) == 1


def test_exhausted_throttling_fails_the_record_which_returns_to_the_queue(
    queue, agents, visibility, images, monkeypatch, caplog
):
    """Stubber answers before botocore's retry logic, so it stands for throttling that outlasted the retries. It
    stands in for the whole SSM client, so it says the agent is Online too."""
    instance = run_instance(NODE_TAGS)
    queue.publish(running_event(instance))
    stubbed = boto3.client("ssm", region_name=REGION)
    stubber = Stubber(stubbed)
    online = {"InstanceInformationList": [{"InstanceId": instance, "PingStatus": "Online"}]}
    stubber.add_response("describe_instance_information", online)
    stubber.add_client_error("send_command", service_error_code="ThrottlingException", http_status_code=400)
    stubber.activate()
    real_client = aws.client
    monkeypatch.setattr(aws.clients, "client", lambda service: stubbed if service == "ssm" else real_client(service))

    response = queue.deliver()

    assert len(response["batchItemFailures"]) == 1
    stubber.assert_no_pending_responses()
    assert visibility == []  # an error is not "not ready": it comes back after the queue's visibility timeout
    assert queue.counts() == {"visible": 0, "hidden": 1}
    assert idempotency_records() == []
    failures = [
        record for record in caplog.records if record.getMessage() == "node launch failed, returned to the queue"
    ]
    assert len(failures) == 1
    assert isinstance(failures[0].exc_info[1], ClientError)

    # Throttling over: the same message is delivered again and the command goes out.
    monkeypatch.setattr(aws.clients, "client", real_client)
    agents.online.add(instance)
    assert queue.deliver() == {"batchItemFailures": []}
    assert len(commands()) == 1


def test_duplicate_still_in_progress_elsewhere_is_retried_later(queue, agents, sent, visibility, images, monkeypatch):
    """Two deliveries of one launch in concurrent invocations: the second must neither send nor be dropped."""

    def in_progress(*_: Any, **__: Any) -> Any:
        raise IdempotencyAlreadyInProgressError("in progress")

    monkeypatch.setattr(sending, "run_once", in_progress)
    launch_ready_node(queue, agents)

    assert len(queue.deliver()["batchItemFailures"]) == 1
    assert visibility == [15]
    assert sent == []


def test_sample_sqs_event_runs_through_the_handler(env, aws_mock, agents, sent, ec2_calls, lambda_context, caplog):
    """events/node_launch/sqs-ec2-running.json (for sam local invoke -e) is a well-formed launch: it is parsed and
    its instance looked up (which does not exist here), not dropped as malformed."""
    event = json.loads((EVENTS / "sqs-ec2-running.json").read_text())
    (record,) = event["Records"]
    instance_id = json.loads(record["body"])["detail"]["instance-id"]

    response = load_handler("node_launch").lambda_handler(event, lambda_context)

    assert response == {"batchItemFailures": []}
    assert ec2_calls == [instance_id]
    assert [getattr(r, "reason", None) for r in caplog.records if r.getMessage() == "launch ignored"] == [
        "instance not found"
    ]
    assert "malformed EC2 event dropped" not in caplog.messages
    assert sent == []


@pytest.mark.parametrize(
    "event",
    [None, {}, {"Records": "x"}, {"Records": [{"eventSource": "aws:s3"}]}, "RULE"],
    ids=["none", "empty", "records-not-a-list", "not-sqs-records", "bare-eventbridge-event"],
)
def test_event_that_is_not_an_sqs_batch_is_logged_and_dropped(env, aws_mock, sent, lambda_context, caplog, event):
    if event == "RULE":
        event = running_event("i-0abcdef1234567890")

    response = load_handler("node_launch").lambda_handler(event, lambda_context)

    assert response == {"batchItemFailures": []}
    assert "not an SQS batch: event dropped" in caplog.messages
    assert sent == []


def test_record_without_receive_count_is_taken_as_a_first_delivery_and_said_so(
    queue, agents, sent, images, lambda_context, caplog
):
    instance = run_instance(NODE_TAGS)
    agents.online.add(instance)
    record = {
        "messageId": "m-1",
        "receiptHandle": "r-1",
        "body": json.dumps(running_event(instance)),
        "attributes": {},
        "messageAttributes": {},
        "eventSource": "aws:sqs",
        "eventSourceARN": queue.arn,
        "awsRegion": REGION,
    }

    response = load_handler("node_launch").lambda_handler({"Records": [record]}, lambda_context)

    assert response == {"batchItemFailures": []}
    assert "record without a valid ApproximateReceiveCount: taken as the first delivery" in caplog.messages
    assert [request["InstanceIds"] for request in sent] == [[instance]]


def test_lost_send_reply_is_found_not_resent(queue, agents, images, caplog):
    """SSM carries the SendCommand out but the reply is lost (read timeout injected after moto answered): one
    command, found by its marker, and the record succeeds."""
    answered = lose_replies(aws.client("ssm"), "SendCommand", times=8)
    instance = launch_ready_node(queue, agents)

    assert queue.deliver() == {"batchItemFailures": []}

    assert answered == [200]
    assert [command["InstanceIds"] for command in commands()] == [[instance]]
    assert "SendCommand reply lost, but the command was sent" in caplog.messages


def test_unknown_send_outcome_is_retried_soon_and_sends_once(queue, agents, visibility, images):
    """A connection reset after the request was written, which SSM did not carry out: the record is retried after
    the short not-ready backoff (not the queue's 6-minute visibility timeout), and the retry sends one command."""
    resets = reset_first_connection(aws.client("ssm"), "SendCommand")
    instance = launch_ready_node(queue, agents)

    assert len(queue.deliver()["batchItemFailures"]) == 1
    assert len(resets) == 1  # not retried blindly
    assert visibility == [15]
    assert commands() == []
    assert queue.deliver() == {"batchItemFailures": []}
    assert [command["InstanceIds"] for command in commands()] == [[instance]]


def test_throttled_batch_stops_starting_records_before_the_function_times_out(
    queue, agents, images, lambda_context, botocore_clock, caplog
):
    """A batch of 10 new nodes under SendCommand throttling without end, on botocore's real retry path with a fake
    clock at the worst-case backoff: the batch ends inside the function's time, every record reported failed (none
    lost), the ones it had no time for not even started."""
    attempts = throttle_first(ssm_backends[ACCOUNT][REGION], "send_command", times=10**6)
    for _ in range(10):
        launch_ready_node(queue, agents)

    response = queue.deliver()

    assert len(response["batchItemFailures"]) == 10
    budget = lambda_context.get_remaining_time_in_millis() / 1000
    assert sum(botocore_clock.sleeps) <= budget - aws.RESERVE_SECONDS - aws.WORST_ATTEMPT_SECONDS
    # 58 s to spend: the first record's retries stop after 31 s of backoff, the second's and the third's after 7
    # each; the other seven are not started, and come back after the short not-ready backoff.
    reasons = [getattr(record, "reason", "") for record in caplog.records]
    not_started = [reason for reason in reasons if reason.startswith("not started:")]
    assert len(not_started) == 7
    assert len(attempts) == 6 + 4 + 4
    assert commands() == []


def test_more_repositories_than_one_command_takes_are_sent_in_batches_once(
    env, aws_mock, lambda_context, agents, sent, monkeypatch
):
    """60 watched repositories: the document takes 50 images a command, so the node gets two commands, each its
    own at-most-once send; a duplicate delivery sends neither again."""
    repositories = [f"team-{n:02d}/model" for n in range(60)]
    monkeypatch.setenv("REPOSITORY_NAMES", ",".join(repositories))
    load.cache_clear()
    for repository in repositories:
        create_repository(repository)
        push_image(repository, repository, tag="v1", pushed_at=at(1))
    queue = LaunchQueue(load_handler("node_launch").lambda_handler, lambda_context, MAX_RECEIVES)
    instance = run_instance(NODE_TAGS)
    agents.online.add(instance)
    event = running_event(instance)
    queue.publish(event)
    queue.publish(event)

    assert queue.deliver() == {"batchItemFailures": []}
    assert queue.deliver() is None

    assert [len(images_of(request)) for request in sent] == [50, 10]
    pulled = sorted(repository_of(reference) for request in sent for reference in images_of(request))
    assert pulled == repositories
    assert len(commands()) == 2


def test_a_failed_batch_look_ahead_leaves_each_record_to_describe_its_own_instance(
    queue, agents, sent, images, ec2_calls, monkeypatch, caplog
):
    """The batch's one DescribeInstances fails (an error botocore does not retry): nothing is lost, each record
    describes its own instance."""

    def denied(instance_ids: list[str], ec2: Any = None) -> dict[str, Any]:
        raise ClientError({"Error": {"Code": "UnauthorizedOperation", "Message": "no"}}, "DescribeInstances")

    monkeypatch.setattr(aws.ec2, "describe_instances", denied)
    instances = [launch_ready_node(queue, agents) for _ in range(3)]

    assert queue.deliver() == {"batchItemFailures": []}

    assert "batch DescribeInstances failed: each record describes its own" in caplog.messages
    assert sorted(ec2_calls) == sorted(instances)  # one DescribeInstances by id per record
    assert sorted(request["InstanceIds"][0] for request in sent) == sorted(instances)


@pytest.mark.parametrize(
    ("platform", "why"),
    [
        (("Linux", "Bottlerocket"), "Bottlerocket node"),
        (("Windows", "Microsoft Windows Server 2022 Datacenter"), "Windows node"),
    ],
)
def test_a_node_this_application_cannot_serve_is_acknowledged_without_a_command(
    queue, agents, sent, images, caplog, platform, why
):
    """Its agent is Online, but a command could not succeed there (DescribeInstanceInformation's PlatformType and
    PlatformName, from the Agents double): no command, no retry, said why."""
    instance = launch_ready_node(queue, agents)
    agents.platforms[instance] = platform

    assert queue.deliver() == {"batchItemFailures": []}

    assert sent == []
    assert queue.counts() == {"visible": 0, "hidden": 0}
    reasons = [record.reason for record in caplog.records if record.getMessage() == "launch ignored"]
    assert len(reasons) == 1
    assert reasons[0].startswith(f"unsupported node: {why}")


@pytest.mark.parametrize("tagged", [True, False], ids=["cluster-tagged", "tags-pending"])
def test_an_eks_auto_mode_node_is_left_out_at_once_not_waited_for(
    queue, agents, sent, visibility, images, caplog, tagged
):
    """An Auto Mode node (the tags Auto Mode launches its instances with) never registers with SSM: no retry through
    the queue into the dead-letter queue, no command, said why."""
    auto_mode = {"eks:eks-cluster-name": CLUSTER, AUTO_MODE_TAG: "default", "eks:kubernetes-node-pool-name": "general"}
    instance = run_instance({**NODE_TAGS, **auto_mode} if tagged else auto_mode)
    queue.publish(running_event(instance))

    assert queue.deliver() == {"batchItemFailures": []}

    assert sent == []
    assert visibility == []
    assert queue.counts() == {"visible": 0, "hidden": 0}
    reasons = [record.reason for record in caplog.records if record.getMessage() == "launch ignored"]
    assert reasons == [f"unsupported node: {AUTO_MODE_NODE}"]
