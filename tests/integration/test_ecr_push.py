"""The ECR push handler against moto: which command goes out, to which targets, with which digest.

moto accepts every SendCommand parameter unvalidated and drops several (DocumentVersion, CloudWatchOutputConfig),
so these tests capture the request the code hands to botocore and assert on that.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyPersistenceLayerError
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from moto.dynamodb.models import dynamodb_backends
from moto.ssm.models import ssm_backends

from eks_prefetch import aws
from eks_prefetch.prefetch.push import PushedImageNotFoundError
from eks_prefetch.prefetch.resolution import NewestImages
from eks_prefetch.prefetch.sending import SendOutcomeUnknownError, event_marker
from eks_prefetch.settings import PushSettings, load
from testing import events
from testing.apicalls import ApiCalls
from testing.deployment import idempotency_records, load_handler, send_attempts
from testing.ecr import at, create_repository, digest_of, push_image
from testing.environment import ACCOUNT, CLUSTER, DOCUMENT, LOG_GROUP, REGION
from tests.faults import fail_completed_saves, lose_replies, reset_first_connection, throttle_first

EVENTS = Path(__file__).resolve().parents[2] / "events" / "ecr_push"
REGISTRY = "123456789012.dkr.ecr.us-east-1.amazonaws.com"


def sample(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / f"{name}.json").read_text())


def push_event(repository: str, digest: str, tag: str | None, event_id: str = "evt-1") -> dict[str, Any]:
    """ECR's push event (testing/events.py), with one event id for every push unless a test says otherwise."""
    return events.push_event(repository, digest, tag, event_id)


@pytest.fixture
def handler(aws_mock: None) -> Any:
    return load_handler("ecr_push").lambda_handler


@pytest.fixture
def api_calls(aws_mock: None) -> Iterator[ApiCalls]:
    """API calls made through the project's clients (the counting `make bench` uses too)."""
    with ApiCalls().counting() as calls:
        yield calls


@pytest.fixture
def trainer() -> dict[str, str]:
    """ml/trainer with an older and a newer tagged image, plus untagged platform children."""
    create_repository("ml/trainer")
    create_repository("ml/inference")
    digests = {
        "v1": push_image("ml/trainer", "v1", tag="v1.0.0", pushed_at=at(0)),
        "v2": push_image("ml/trainer", "v2", tag="v2.0.0", pushed_at=at(10)),
    }
    push_image("ml/trainer", "v2-arm64-child", tag=None, pushed_at=at(11))
    return digests


@pytest.mark.parametrize(
    ("size", "environment", "max_concurrency"),
    [
        (3_500_000_000, {}, "64"),  # 50 Gbit/s over a 3.5 GB prefetch's ~97 MB/s
        (500_000_000, {}, "66"),
        (10_000_000_000, {"REGISTRY_BANDWIDTH_GBPS": "100"}, "129"),
        (3_500_000_000, {"REGISTRY_BANDWIDTH_GBPS": "5"}, "6"),
        (3_500_000_000, {"MAX_CONCURRENCY": "100"}, "100"),  # the user's MaxConcurrency wins
        (3_500_000_000, {"MAX_CONCURRENCY": "10%"}, "10%"),
    ],
)
def test_the_fleet_commands_concurrency_follows_the_pushed_images_size_and_the_budget(
    handler, sent, lambda_context, monkeypatch, size, environment, max_concurrency
):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    load.cache_clear()
    create_repository("ml/trainer")
    digest = push_image("ml/trainer", "big", tag="v3.0.0", pushed_at=at(20), size=size)

    result = handler(push_event("ml/trainer", digest, "v3.0.0"), lambda_context)

    assert result["status"] == "sent"
    (request,) = sent
    assert request["MaxConcurrency"] == max_concurrency
    assert request["MaxErrors"] == "25%"  # MaxErrors keeps its meaning


def test_new_image_sends_one_digest_pinned_fleet_command(handler, sent, api_calls, trainer, lambda_context):
    result = handler(push_event("ml/trainer", trainer["v2"], "v2.0.0"), lambda_context)

    assert result["status"] == "sent"
    assert result["image"] == f"{REGISTRY}/ml/trainer:v2.0.0@{trainer['v2']}"
    (request,) = sent
    assert request["DocumentName"] == DOCUMENT
    assert request["DocumentVersion"] == "1"
    assert request["Targets"] == [{"Key": "tag:eks:cluster-name", "Values": [CLUSTER]}]
    assert "InstanceIds" not in request
    assert request["Parameters"]["images"] == [f"{REGISTRY}/ml/trainer:v2.0.0@{trainer['v2']}"]
    assert request["Parameters"]["pin"] == ["true"]
    assert request["Parameters"]["keepPinned"] == ["2"]
    # The pushed image's size (DescribeImages) over the default budget: moto's image is 7 kB, so the budget allows
    # far more pulls at once than any fleet (see the next test for real sizes).
    assert request["MaxConcurrency"] == "178051"
    assert request["MaxErrors"] == "25%"
    assert request["TimeoutSeconds"] == 600
    assert request["CloudWatchOutputConfig"] == {"CloudWatchLogGroupName": LOG_GROUP, "CloudWatchOutputEnabled": True}
    # The event key's marker, which ListCommands shows, so that a retry can find what an earlier attempt sent.
    marker = event_marker({"repository": "ml/trainer", "digest": trainer["v2"]})
    assert request["Comment"] == f"prefetch ml/trainer:v2.0.0 [{marker}]"
    # O(1) calls per push: one describe page, one send.
    assert api_calls.only(("ecr", "ssm")) == Counter({"ecr:DescribeImages": 1, "ssm:SendCommand": 1})
    # moto recorded the command too.
    (command,) = boto3.client("ssm").list_commands()["Commands"]
    assert command["CommandId"] == result["command_id"]


@pytest.mark.parametrize(
    ("event_name", "reason"),
    [
        ("push-untagged", "untagged push"),
        ("push-unwatched", "repository not watched"),
        ("push-signature", "not a container image"),
        ("push-failed", "not a successful push"),
        ("delete", "not a successful push"),
    ],
)
def test_irrelevant_events_send_nothing_and_call_nothing(handler, sent, api_calls, event_name, reason, lambda_context):
    result = handler(sample(event_name), lambda_context)

    assert result == {"status": "ignored", "reason": reason}
    assert sent == []
    assert sum(api_calls.counts.values()) == 0


def test_tag_outside_the_filter_is_ignored(handler, sent, trainer, lambda_context):
    digest = push_image("ml/trainer", "sig", tag="sha256-abc.sig", pushed_at=at(20))

    result = handler(push_event("ml/trainer", digest, "sha256-abc.sig"), lambda_context)

    assert result["reason"] == "tag does not match the filter"
    assert sent == []


def test_stale_event_never_sends_an_older_image(handler, sent, trainer, lambda_context):
    handler(push_event("ml/trainer", trainer["v2"], "v2.0.0", "evt-new"), lambda_context)
    # The push of v1 is delivered late, after v2's.
    result = handler(push_event("ml/trainer", trainer["v1"], "v1.0.0", "evt-old"), lambda_context)

    assert result["status"] == "ignored"
    assert result["reason"].startswith("stale event")
    assert [r["Parameters"]["images"] for r in sent] == [[f"{REGISTRY}/ml/trainer:v2.0.0@{trainer['v2']}"]]


def test_out_of_order_delivery_sends_only_the_newest(handler, sent, trainer, lambda_context):
    # v1's event arrives when v2 is already in the registry but v2's event is not yet processed.
    first = handler(push_event("ml/trainer", trainer["v1"], "v1.0.0", "evt-old"), lambda_context)
    second = handler(push_event("ml/trainer", trainer["v2"], "v2.0.0", "evt-new"), lambda_context)

    assert first["status"] == "ignored"
    assert second["status"] == "sent"
    assert len(sent) == 1


def test_pushed_image_not_visible_yet_fails_for_a_retry_then_sends(handler, sent, trainer, lambda_context):
    """The event is newer than what ECR lists: the invocation fails (Lambda retries it, then dead-letters it)."""
    event = push_event("ml/trainer", digest_of("v3"), "v3.0.0")

    with pytest.raises(PushedImageNotFoundError):
        handler(event, lambda_context)
    assert sent == []

    push_image("ml/trainer", "v3", tag="v3.0.0", pushed_at=at(30))
    assert handler(event, lambda_context)["status"] == "sent"
    assert sent[0]["Parameters"]["images"] == [f"{REGISTRY}/ml/trainer:v3.0.0@{digest_of('v3')}"]


def test_push_whose_tag_already_moved_on_is_stale(handler, sent, lambda_context):
    """v2 was pushed as "latest", then v3 took the tag before v2's event was handled: v2 is now untagged, so the
    tagged listing omits it (moto ignores tagStatus, so Stubber serves ECR's answers), and it must not be pulled."""
    v2, v3 = digest_of("v2"), digest_of("v3")
    image = {"registryId": "123456789012", "repositoryName": "ml/trainer", "imagePushedAt": at(20)}
    ecr = aws.client("ecr")
    with Stubber(ecr) as stubber:
        stubber.add_response(
            "describe_images", {"imageDetails": [{**image, "imageDigest": v3, "imageTags": ["latest"]}]}
        )
        stubber.add_response(
            "describe_images",
            {"imageDetails": [{**image, "imageDigest": v2, "imagePushedAt": at(10)}]},
            {"repositoryName": "ml/trainer", "imageIds": [{"imageDigest": v2}]},
        )
        result = handler(push_event("ml/trainer", v2, "latest"), lambda_context)
        stubber.assert_no_pending_responses()

    assert result["status"] == "ignored"
    assert result["reason"].startswith("stale event")
    assert sent == []


def test_duplicate_event_sends_one_command(handler, sent, trainer, lambda_context):
    event = push_event("ml/trainer", trainer["v2"], "v2.0.0")

    first = handler(event, lambda_context)
    again = handler(copy.deepcopy(event), lambda_context)
    # A re-tag of the same digest is a new event for the same (repository, digest).
    retag = handler(push_event("ml/trainer", trainer["v2"], "latest", "evt-retag"), lambda_context)

    assert first["status"] == "sent"
    assert again == {"status": "duplicate", "image": first["image"], "command_id": first["command_id"]}
    assert retag["status"] == "duplicate"
    assert len(sent) == 1
    items = idempotency_records()
    assert len(items) == 1
    assert items[0]["status"]["S"] == "COMPLETED"
    assert send_attempts() == {event_marker({"repository": "ml/trainer", "digest": trainer["v2"]}): 1}


def test_newest_of_1500_images_across_pages(handler, sent, lambda_context):
    """moto ignores maxResults, nextToken and tagStatus, so botocore's Stubber serves the two pages ECR would:
    1,000 then 500 images, with imageTags missing on some, in no particular order."""
    details = []
    for index in range(1500):
        detail = {
            "registryId": "123456789012",
            "repositoryName": "ml/trainer",
            "imageDigest": digest_of(f"bulk-{index}"),
            "imagePushedAt": at(index % 100),
            "imageManifestMediaType": "application/vnd.oci.image.manifest.v1+json",
        }
        if index % 7:
            detail["imageTags"] = [f"build-{index}"]
        details.append(detail)
    # Several tagged images share the newest push time: the tie goes to the highest digest, whatever the order.
    tied = [d for d in details if d["imagePushedAt"] == at(99) and "imageTags" in d]
    newest = max(tied, key=lambda d: d["imageDigest"])
    expected = {"repositoryName": "ml/trainer", "filter": {"tagStatus": "TAGGED"}, "maxResults": 1000}
    ecr = aws.client("ecr")
    with Stubber(ecr) as stubber:
        stubber.add_response("describe_images", {"imageDetails": details[:1000], "nextToken": "page-2"}, expected)
        stubber.add_response("describe_images", {"imageDetails": details[1000:]}, {**expected, "nextToken": "page-2"})
        result = handler(push_event("ml/trainer", newest["imageDigest"], newest["imageTags"][0]), lambda_context)
        stubber.assert_no_pending_responses()

    assert result["status"] == "sent"
    assert sent[0]["Parameters"]["images"] == [
        f"{REGISTRY}/ml/trainer:{newest['imageTags'][0]}@{newest['imageDigest']}"
    ]
    # Exactly the two pages were asked for (the Stubber holds no unused response, and would reject a third call).
    assert len(sent) == 1


def test_repository_without_matching_image_sends_nothing(handler, sent, lambda_context):
    create_repository("ml/trainer")
    digest = push_image("ml/trainer", "only-sig", tag="sha256-x.sig", pushed_at=at(1))

    result = handler(push_event("ml/trainer", digest, "v1.0.0"), lambda_context)

    assert result == {"status": "ignored", "reason": "no tagged image matches the filter"}
    assert sent == []


def test_deleted_repository_is_ignored_not_retried(handler, sent, lambda_context):
    result = handler(push_event("ml/trainer", digest_of("gone"), "v1"), lambda_context)

    assert result == {"status": "ignored", "reason": "repository does not exist"}
    assert sent == []


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"detail-type": "ECR Image Action", "source": "aws.ecr", "detail": "not an object"},
        {**sample("push-tagged"), "detail": {**sample("push-tagged")["detail"], "image-digest": "sha256:zz"}},
        {**sample("push-tagged"), "detail": {**sample("push-tagged")["detail"], "image-tag": "x;rm -rf /"}},
        {**sample("push-tagged"), "source": "aws.ec2"},
    ],
    ids=["empty", "detail-not-object", "bad-digest", "shell-in-tag", "wrong-source"],
)
def test_malformed_event_is_dropped_with_a_log_and_no_retry(handler, sent, event, lambda_context, caplog):
    result = handler(event, lambda_context)

    assert result == {"status": "ignored", "reason": "malformed event"}
    assert sent == []
    assert "malformed ECR event dropped" in caplog.messages


def test_throttled_send_is_retried_by_botocore(handler, trainer, lambda_context):
    """SSM answers ThrottlingException twice (raised inside moto, so botocore's retry handler sees real HTTP 400
    responses); the third attempt succeeds, and exactly one command exists."""
    attempts = throttle_first(ssm_backends[ACCOUNT][REGION], "send_command", times=2)

    result = handler(push_event("ml/trainer", trainer["v2"], "v2.0.0"), lambda_context)

    assert result["status"] == "sent"
    assert len(attempts) == 3
    assert len(boto3.client("ssm").list_commands()["Commands"]) == 1


def test_throttling_that_outlasts_retries_fails_the_invocation_and_leaves_no_record(handler, trainer, lambda_context):
    """With retries exhausted (Stubber answers ThrottlingException), the invocation raises so that Lambda retries
    it and then dead-letters it; the idempotency record is removed, so the retry sends."""
    ssm = aws.client("ssm")
    with Stubber(ssm) as stubber:
        stubber.add_client_error("send_command", service_error_code="ThrottlingException", http_status_code=400)
        with pytest.raises(ClientError, match="ThrottlingException"):
            handler(push_event("ml/trainer", trainer["v2"], "v2.0.0"), lambda_context)
        stubber.assert_no_pending_responses()

    assert idempotency_records() == []
    retried = handler(push_event("ml/trainer", trainer["v2"], "v2.0.0"), lambda_context)
    assert retried["status"] == "sent"
    # The second attempt looked for a command of the first before sending; throttling meant there was none.
    assert send_attempts() == {event_marker({"repository": "ml/trainer", "digest": trainer["v2"]}): 2}


# --- at most one command per event, also when SSM's answer is lost ------------------------------------------------


def commands_sent() -> list[dict[str, Any]]:
    return boto3.client("ssm").list_commands()["Commands"]


def test_lost_reply_is_not_resent_and_the_command_is_found(handler, trainer, lambda_context, caplog):
    """SSM records the command, but its reply is lost (a read timeout injected in the client's before-send, after
    moto carried the request out). botocore must not re-send it; the command is found by its marker instead."""
    answered = lose_replies(aws.client("ssm"), "SendCommand", times=8)

    result = handler(push_event("ml/trainer", trainer["v2"], "v2.0.0"), lambda_context)

    assert answered == [200]  # one request reached SSM: no blind retry
    (command,) = commands_sent()
    assert result == {
        "status": "sent",
        "image": f"{REGISTRY}/ml/trainer:v2.0.0@{trainer['v2']}",
        "command_id": command["CommandId"],
    }
    assert "SendCommand reply lost, but the command was sent" in caplog.messages
    (record,) = idempotency_records()
    assert record["status"]["S"] == "COMPLETED"
    # A duplicate of the event still sends nothing.
    assert handler(push_event("ml/trainer", trainer["v2"], "v2.0.0"), lambda_context)["status"] == "duplicate"
    assert len(commands_sent()) == 1


def test_ambiguous_failure_with_no_command_listed_fails_then_the_retry_sends_once(handler, trainer, lambda_context):
    """The connection resets after the request was written, and SSM did not carry it out (a ConnectionClosedError
    raised before moto sees the request): the outcome is unknown, so the invocation fails for a retry; the retry
    looks for the command, finds none, and sends exactly one."""
    resets = reset_first_connection(aws.client("ssm"), "SendCommand")

    with pytest.raises(SendOutcomeUnknownError):
        handler(push_event("ml/trainer", trainer["v2"], "v2.0.0"), lambda_context)
    assert len(resets) == 1  # not retried blindly
    assert commands_sent() == []
    assert idempotency_records() == []

    retried = handler(push_event("ml/trainer", trainer["v2"], "v2.0.0"), lambda_context)

    (command,) = commands_sent()
    assert retried["status"] == "sent"
    assert retried["command_id"] == command["CommandId"]
    assert send_attempts() == {event_marker({"repository": "ml/trainer", "digest": trainer["v2"]}): 2}


def expire_in_progress_record() -> None:
    """What time does to an in-progress record whose invocation died: its in-progress expiry (set from the Lambda
    context's remaining time, only if the context was registered with idempotency) passes."""
    (record,) = idempotency_records()
    assert record["status"]["S"] == "INPROGRESS"
    boto3.client("dynamodb").update_item(
        TableName="eks-image-prefetch-idempotency",
        Key={"id": record["id"]},
        UpdateExpression="SET in_progress_expiration = :past",
        ConditionExpression="attribute_exists(in_progress_expiration)",
        ExpressionAttributeValues={":past": {"N": "1"}},
    )


def test_completed_record_that_fails_to_save_does_not_send_twice(handler, trainer, lambda_context, caplog):
    """The send succeeds but marking the idempotency record COMPLETED fails (HTTP 500 from DynamoDB, through
    botocore's retries): the invocation fails with the record left in progress. Once that expires, the retry takes
    the record over, finds the command by its marker, and sends nothing."""
    failed_saves, heal = fail_completed_saves(dynamodb_backends[ACCOUNT][REGION])
    event = push_event("ml/trainer", trainer["v2"], "v2.0.0")

    with pytest.raises(IdempotencyPersistenceLayerError):
        handler(event, lambda_context)
    assert failed_saves  # the fault was hit
    (command,) = commands_sent()

    heal()
    expire_in_progress_record()
    retried = handler(copy.deepcopy(event), lambda_context)

    assert retried["command_id"] == command["CommandId"]
    assert len(commands_sent()) == 1
    assert "command found, sent by an earlier attempt: not sending again" in caplog.messages
    (record,) = idempotency_records()
    assert record["status"]["S"] == "COMPLETED"


# --- retries fit the function's time -------------------------------------------------------------------------------


def test_sustained_throttling_gives_up_within_the_invocation_time(handler, trainer, lambda_context, botocore_clock):
    """SendCommand throttled without end (inside moto, so botocore's real retry path runs), backoff at its worst
    case on a fake clock that botocore sleeps on: the retries stop with time left, rather than being killed by the
    function timeout. Unbounded, botocore's 8 attempts sleep 1+2+4+8+16+20+20 = 71 s."""
    attempts = throttle_first(ssm_backends[ACCOUNT][REGION], "send_command", times=10**6)

    with pytest.raises(ClientError, match="ThrottlingException"):
        handler(push_event("ml/trainer", trainer["v2"], "v2.0.0"), lambda_context)

    budget = lambda_context.get_remaining_time_in_millis() / 1000
    assert len(attempts) > 1  # retried while there was time
    assert sum(botocore_clock.sleeps) <= budget - aws.RESERVE_SECONDS - aws.WORST_ATTEMPT_SECONDS
    assert commands_sent() == []


def test_tags_as_long_as_ecr_allows_are_prefetched_by_both_paths(handler, sent, lambda_context):
    """ECR accepts tags of up to 300 characters (OCI's rule says 128). The push path sends such an image, as the
    node-launch path does, and the Comment stays within SSM's 100 characters."""
    long_tag = "v" + "1" * 299
    create_repository("ml/trainer")
    digest = push_image("ml/trainer", "long", tag=long_tag, pushed_at=at(5))

    result = handler(push_event("ml/trainer", digest, long_tag), lambda_context)

    assert result["status"] == "sent"
    (request,) = sent
    assert request["Parameters"]["images"] == [f"{REGISTRY}/ml/trainer@{digest}"]
    assert len(request["Comment"]) <= 100
    assert [image.digest for image in NewestImages(load(PushSettings)).every_repository()] == [digest]
    too_long = handler(push_event("ml/trainer", digest, long_tag + "1"), lambda_context)
    assert too_long == {"status": "ignored", "reason": "malformed event"}


def emitted_metrics(stdout: str) -> list[str]:
    """Names of the metrics in the EMF documents a handler printed (what CloudWatch would turn into metrics)."""
    names = []
    for line in stdout.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            document = json.loads(line)
            for directive in document["_aws"]["CloudWatchMetrics"]:
                names.extend(metric["Name"] for metric in directive["Metrics"])
    return names


def test_push_outcomes_are_emitted_as_the_metrics_the_dashboard_reads(handler, trainer, lambda_context, capsys):
    """CommandsSent, DuplicateEvents and EventsIgnored are a contract with the dashboard and the alarms."""
    handler(push_event("ml/trainer", trainer["v2"], "v2.0.0"), lambda_context)
    assert emitted_metrics(capsys.readouterr().out) == ["CommandsSent"]
    handler(push_event("ml/trainer", trainer["v2"], "v2.0.0"), lambda_context)
    assert emitted_metrics(capsys.readouterr().out) == ["DuplicateEvents"]
    handler(push_event("ml/trainer", trainer["v1"], "v1.0.0"), lambda_context)
    assert emitted_metrics(capsys.readouterr().out) == ["EventsIgnored"]
    handler({"detail-type": "nonsense"}, lambda_context)
    assert emitted_metrics(capsys.readouterr().out) == ["EventsIgnored"]
