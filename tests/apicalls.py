"""AWS API calls the functions make, counted with botocore event hooks on the real clients, in the real code paths.

One implementation for both uses: tests/integration/test_api_calls.py asserts the counts at small sizes, and
`make bench` (bench/api_calls.py) reports them up to large fleets and repositories.

AWS is moto, apart from two services the real handlers need and moto cannot play here:
- ssm:DescribeInstanceInformation (not in moto): answered by ``Agents`` from registration times on a clock;
- the node-launch queue: ``SimulatedQueue`` delivers SQS batches to the real handler and answers its
  ChangeMessageVisibility itself, so that time is a simulated clock rather than moto's wall clock.
Both are answered from botocore's ``before-call`` event, after the call was counted and its parameters validated
against the service model, so the code under test, including the adapters in ``eks_prefetch.aws``, runs unchanged.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from moto.ec2.models import ec2_backends
from moto.ecr.models import Image, ecr_backends

from eks_prefetch import aws, settings, status_table, sweep
from harness.routing import event_envelope
from tests.conftest import ACCOUNT, CLUSTER, DEPLOYMENT_ENV, REGION, FakeLambdaContext, load_handler, mocked_aws
from tests.ecr import digest_of, manifest_of
from tests.status_doubles import REGISTRY, STATUS_TABLE, Answer, FakeFleet, FakeInvocations, create_status_table

_REAL_LIST_INVOCATIONS = aws.ssm.list_command_invocations
_REAL_ONLINE_NODES = aws.ssm.online_managed_nodes

SERVICES = ("ecr", "ssm", "ec2", "dynamodb", "sqs")
# How the report groups them: the state store apart from the calls that reach ECR, SSM and EC2.
CONTROL_PLANE = ("ecr", "ssm", "ec2")


class ApiCalls:
    """Every API call the project's clients make, as "service:Operation" -> count (paginated: one per page).

    Counted on ``before-parameter-build``, once per API call: botocore's own retries of a call are not counted
    (none happen against moto), and calls answered by a hook below are counted like any other.
    """

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.invocations = 0  # Lambda invocations, where a scenario drives a queue

    def _count(self, model: Any, **_: Any) -> None:
        self.counts[f"{model.service_model.service_name}:{model.name}"] += 1

    @contextlib.contextmanager
    def counting(self) -> Iterator[ApiCalls]:
        events = [(aws.client(service).meta.events, f"before-parameter-build.{service}") for service in SERVICES]
        for emitter, name in events:
            emitter.register(name, self._count, unique_id=f"api-calls-{id(self)}")
        try:
            yield self
        finally:
            for emitter, name in events:
                emitter.unregister(name, unique_id=f"api-calls-{id(self)}")

    def total(self, services: tuple[str, ...] = CONTROL_PLANE) -> int:
        return sum(count for key, count in self.counts.items() if key.split(":", 1)[0] in services)

    def only(self, services: tuple[str, ...]) -> Counter[str]:
        return Counter({key: count for key, count in self.counts.items() if key.split(":", 1)[0] in services})


@contextlib.contextmanager
def deployment(**overrides: str) -> Iterator[None]:
    """A deployment's environment and moto-backed AWS with the idempotency table, like the tests' aws_mock fixture,
    as a context manager for the benchmark too. The environment is restored afterwards."""
    saved = dict(os.environ)
    os.environ.update({**DEPLOYMENT_ENV, **overrides})
    settings.get_settings.cache_clear()
    try:
        with mocked_aws():
            yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        settings.get_settings.cache_clear()


def answer_from(
    service: str, operation: str, answer: Callable[[Mapping[str, Any]], dict[str, Any] | None], name: str
) -> None:
    """Answer an operation of the shared client from ``answer(its parameters)`` instead of moto (None: moto answers).

    botocore hands ``before-call`` the serialized request only, so the parameters are kept from the earlier
    ``before-parameter-build`` event, in the call's context."""
    emitter = aws.client(service).meta.events

    def keep(params: Mapping[str, Any], context: dict[str, Any], **_: Any) -> None:
        context[name] = dict(params)

    def respond(context: dict[str, Any], **_: Any) -> tuple[AWSResponse, dict[str, Any]] | None:
        parsed = answer(context[name])
        if parsed is None:
            return None
        return AWSResponse("https://simulated.invalid/", 200, {}, None), {**parsed, "ResponseMetadata": {}}

    # The latest registration under a name wins (botocore ignores a second one with the same unique_id).
    emitter.unregister(f"before-parameter-build.{service}.{operation}", unique_id=f"{name}-keep")
    emitter.unregister(f"before-call.{service}.{operation}", unique_id=f"{name}-respond")
    emitter.register(f"before-parameter-build.{service}.{operation}", keep, unique_id=f"{name}-keep")
    emitter.register(f"before-call.{service}.{operation}", respond, unique_id=f"{name}-respond")


def page_describe_images_as_ecr_does() -> None:
    """moto returns every image in one page whatever maxResults asks; ECR returns at most 1,000 a page. Listing
    calls are served from moto's repository in ECR's pages, so that the page count is what ECR would make."""

    def describe(params: Mapping[str, Any]) -> dict[str, Any] | None:
        if "imageIds" in params:
            return None
        repository = ecr_backends[ACCOUNT][REGION].repositories[params["repositoryName"]]
        tagged = [image for image in repository.images if image.image_tag]
        start = int(params.get("nextToken", "0"))
        end = start + min(params.get("maxResults", 100), 1000)
        page: dict[str, Any] = {
            "imageDetails": [
                {
                    "registryId": ACCOUNT,
                    "repositoryName": params["repositoryName"],
                    "imageDigest": image.image_digest,
                    "imageTags": [image.image_tag],
                    "imagePushedAt": datetime.fromtimestamp(image.image_pushed_at, UTC),
                }
                for image in tagged[start:end]
            ]
        }
        if end < len(tagged):
            page["nextToken"] = str(end)
        return page

    answer_from("ecr", "DescribeImages", describe, "ecr-pages")


# --- the fleet and the repositories --------------------------------------------------------------------------------


def run_nodes(count: int, tags: Mapping[str, str] | None = None) -> list[str]:
    """``count`` running instances with the node tag, in as few RunInstances calls as moto allows."""
    tags = {"eks:cluster-name": CLUSTER} if tags is None else tags
    ec2 = boto3.client("ec2")
    ids: list[str] = []
    while len(ids) < count:
        batch = min(count - len(ids), 1000)
        kwargs: dict[str, Any] = {"ImageId": "ami-12c6146b", "MinCount": batch, "MaxCount": batch}
        if tags:
            kwargs["TagSpecifications"] = [
                {"ResourceType": "instance", "Tags": [{"Key": key, "Value": value} for key, value in tags.items()]}
            ]
        ids += [instance["InstanceId"] for instance in ec2.run_instances(**kwargs)["Instances"]]
    return ids


def set_launch_time(instance_id: str, launched: datetime) -> None:
    """moto stamps "now" on launch; set it as EC2 would have."""
    instance = ec2_backends[ACCOUNT][REGION].get_instance(instance_id)
    instance.launch_time = launched.astimezone(UTC).replace(tzinfo=None)


def fill_repository(name: str, images: int) -> str:
    """A repository with ``images`` tagged images, one a second apart; returns the newest one's digest.

    Straight into moto's repository: its PutImage scans the repository on every put, too slow for 5,000."""
    boto3.client("ecr").create_repository(repositoryName=name)
    repository = ecr_backends[ACCOUNT][REGION].repositories[name]
    start = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp())
    digest = ""
    for number in range(images):
        digest = digest_of(f"{name}-{number}")
        image = Image(ACCOUNT, f"v{number}", manifest_of(f"{name}-{number}"), name, digest=digest)
        image.image_pushed_at = start + number
        repository.images.append(image)
    return digest


def push_event(repository: str, digest: str, tag: str) -> dict[str, Any]:
    detail = {
        "result": "SUCCESS",
        "repository-name": repository,
        "image-digest": digest,
        "action-type": "PUSH",
        "image-tag": tag,
    }
    return event_envelope("aws.ecr", "ECR Image Action", detail)


def running_event(instance_id: str) -> dict[str, Any]:
    return event_envelope(
        "aws.ec2",
        "EC2 Instance State-change Notification",
        {"instance-id": instance_id, "state": "running"},
        [f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/{instance_id}"],
    )


# --- SSM agents and the launch queue, on a simulated clock --------------------------------------------------------


@dataclass
class Clock:
    now: float = 0.0


@dataclass
class Agents:
    """ssm:DescribeInstanceInformation: Online from an instance's registration time on (never if it has none)."""

    clock: Clock
    registered_at: dict[str, float] = field(default_factory=dict)
    # Or: how many more times an instance is reported not online before it is (counting scenarios).
    asks_before_online: dict[str, int] = field(default_factory=dict)

    def install(self) -> None:
        answer_from("ssm", "DescribeInstanceInformation", self._describe, "simulated-agents")

    def _describe(self, params: Mapping[str, Any]) -> dict[str, Any]:
        (instance_filter,) = params["Filters"]
        online = [
            {"InstanceId": instance_id, "PingStatus": "Online"}
            for instance_id in instance_filter["Values"]
            if self._online(instance_id)
        ]
        return {"InstanceInformationList": online}

    def _online(self, instance_id: str) -> bool:
        pending = self.asks_before_online.get(instance_id)
        if pending is not None:
            self.asks_before_online[instance_id] = pending - 1
            return pending <= 0
        return self.registered_at.get(instance_id, float("inf")) <= self.clock.now


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
        response = self.handler({"Records": records}, context)
        failed = {item["itemIdentifier"] for item in response["batchItemFailures"]}
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
        return {
            "messageId": message.message_id,
            "receiptHandle": message.receipt,
            "body": message.body,
            "attributes": {
                "ApproximateReceiveCount": str(message.receive_count),
                "SentTimestamp": "1793534400000",
                "SenderId": "AIDAEVENTBRIDGE",
                "ApproximateFirstReceiveTimestamp": "1793534400000",
            },
            "messageAttributes": {},
            "md5OfBody": "",
            "eventSource": "aws:sqs",
            "eventSourceARN": self.QUEUE_ARN,
            "awsRegion": REGION,
        }


# --- the scenarios, each in a fresh deployment ---------------------------------------------------------------------


def calls_per_push(*, fleet: int, images: int) -> ApiCalls:
    """One push of the newest image of a repository of ``images`` images, to a fleet of ``fleet`` nodes."""
    with deployment(REPOSITORY_NAMES="ml/trainer"):
        run_nodes(fleet)
        digest = fill_repository("ml/trainer", images)
        page_describe_images_as_ecr_does()
        handler = load_handler("ecr_push").lambda_handler
        with ApiCalls().counting() as calls:
            result = handler(push_event("ml/trainer", digest, f"v{images - 1}"), FakeLambdaContext())
        if result["status"] != "sent":
            raise AssertionError(f"push not sent: {result}")
        return calls


def calls_per_launch_burst(*, launches: int, repositories: int, not_ready_polls: int = 0) -> ApiCalls:
    """``launches`` new nodes at once, every watched repository with two images; each node's agent registers after
    ``not_ready_polls`` looks (0: already online at the first)."""
    names = [f"team-{number}/model" for number in range(repositories)]
    with deployment(REPOSITORY_NAMES=",".join(names)):
        for name in names:
            fill_repository(name, 2)
        clock = Clock()
        agents = Agents(clock)
        agents.install()
        queue = SimulatedQueue(clock, max_receives=1000, batching_window=5)
        for node in run_nodes(launches):
            agents.asks_before_online[node] = not_ready_polls
            queue.publish(running_event(node), node)
        with ApiCalls().counting() as calls:
            queue.run()
        unsent = [node for node, outcome in queue.outcomes.items() if outcome.sent_at is None]
        if unsent:
            raise AssertionError(f"{len(unsent)} nodes got no command")
        calls.invocations = queue.invocations
        return calls


# --- the status sweep and self-repair ------------------------------------------------------------------------------


def _paged(items: list[Any], params: Mapping[str, Any], key: str) -> dict[str, Any]:
    """One page of SSM's answer (at most 50 items), with its token."""
    start = int(params.get("NextToken") or 0)
    size = min(int(params.get("MaxResults") or 50), 50)
    page: dict[str, Any] = {key: items[start : start + size]}
    if start + size < len(items):
        page["NextToken"] = str(start + size)
    return page


def serve_pages(invocations: FakeInvocations, fleet: FakeFleet) -> None:
    """The doubles' answers (tests/status_doubles.py) to ListCommandInvocations and DescribeInstanceInformation,
    given at botocore's level in SSM's pages of 50 rather than by replacing the adapters: the real adapters page,
    and each page is counted like any call."""
    answer_from(
        "ssm",
        "ListCommandInvocations",
        lambda params: _paged(
            list(invocations.list_command_invocations(params["CommandId"])), params, "CommandInvocations"
        ),
        "fake-invocations-pages",
    )
    answer_from(
        "ssm",
        "DescribeInstanceInformation",
        lambda params: _paged(list(fleet.online_managed_nodes("", "")), params, "InstanceInformationList"),
        "fake-fleet-pages",
    )


def _batch_put(items: list[dict[str, Any]]) -> None:
    """Setup writes straight to the status table (not counted), 25 a request."""
    dynamodb = boto3.client("dynamodb")
    for start in range(0, len(items), 25):
        batch = [{"PutRequest": {"Item": aws.dynamodb.to_item(item)}} for item in items[start : start + 25]]
        dynamodb.batch_write_item(RequestItems={STATUS_TABLE: batch})


def calls_per_sweep(*, invocations: int, events_lost: bool = False, missing: int = 0) -> ApiCalls:
    """One scheduled run of the status function (`sweep.sweep_and_repair`, self-repair on) over a fleet command of
    ``invocations`` nodes that all succeeded, with one watched repository.

    events_lost=False: every invocation was already counted from its event (the steady state); True: none was, and
    the sweep counts them all. missing: that many more online nodes lack the newest image, with no command in
    flight for them, past the repair grace period: the sweep repairs them, at most RepairMaxNodesPerSweep (200).
    """
    repository = "ml/trainer"
    with deployment(REPOSITORY_NAMES=repository, STATUS_TABLE=STATUS_TABLE, REPAIR_ENABLED="true"):
        create_status_table()
        digest = fill_repository(repository, 2)  # the newest pushed on 2026-11-01: long past the grace period
        reference = f"{REGISTRY}/{repository}@{digest}"
        nodes = [f"i-{number:017x}" for number in range(invocations)]
        lacking = [f"i-{number:017x}" for number in range(invocations, invocations + missing)]
        patch = pytest.MonkeyPatch()
        try:
            fake = FakeInvocations().install(patch)
            fleet = FakeFleet(online=set(nodes) | set(lacking)).install(patch)
            serve_pages(fake, fleet)
            # Adapters back to the real ones: their calls are answered (and counted) at botocore's level.
            patch.setattr(aws.ssm, "list_command_invocations", _REAL_LIST_INVOCATIONS)
            patch.setattr(aws.ssm, "online_managed_nodes", _REAL_ONLINE_NODES)
            command_id = ""
            if nodes:
                command_id = boto3.client("ssm").send_command(
                    DocumentName=DEPLOYMENT_ENV["DOCUMENT_NAME"],
                    InstanceIds=nodes,
                    Parameters={"images": [reference]},
                )["Command"]["CommandId"]
            output = "\n".join(
                [
                    json.dumps({"image": reference, "status": "pulled", "digest": digest, "seconds": 90.0}),
                    json.dumps({"summary": True, "images": 1, "pulled": 1}),
                ]
            )
            ended = datetime.now(UTC)
            for node in nodes:
                fake.set(command_id, node, Answer(stdout=output, ended=ended))
            if not events_lost:
                now = status_table.timestamp(ended)
                expires = int(ended.timestamp()) + 86_400
                _batch_put(
                    [
                        {**status_table.claim_key(command_id, node), "status": "Success", "expires_at": expires}
                        for node in nodes
                    ]
                    + [
                        {
                            **status_table.node_key(node, repository),
                            "instance_id": node,
                            "repository": repository,
                            "digest": digest,
                            "cached_at": now,
                            "expires_at": expires + 7 * 86_400,
                        }
                        for node in nodes
                    ]
                )
            settings.get_settings.cache_clear()
            with contextlib.redirect_stdout(io.StringIO()), ApiCalls().counting() as calls:
                result = sweep.sweep_and_repair(settings.get_settings(), now=datetime.now(UTC))
            expected = 0 if not events_lost else invocations
            if result["counted"] != expected or result["repair"]["nodes_repaired"] != min(missing, 200):
                raise AssertionError(f"unexpected sweep: {result}")
            return calls
        finally:
            patch.undo()
