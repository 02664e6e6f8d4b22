"""AWS API calls the functions make, counted with botocore event hooks on the real clients, in the real code paths.

One implementation for both uses: tests/integration/test_api_calls.py asserts the counts at small sizes, and
`make bench` (bench/api_calls.py) reports them up to large fleets and repositories.

AWS is moto, with the doubles of ``testing`` for what moto lacks or cannot play here, each answering at botocore's
level after the call was counted: ``Agents`` (DescribeInstanceInformation), ``FakeInvocations``
(ListCommandInvocations), ECR's pages of DescribeImages, and the ``SimulatedQueue`` (the node-launch queue on a
simulated clock rather than moto's wall clock).
"""

from __future__ import annotations

import contextlib
import io
import json
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3

from eks_prefetch import aws, settings
from eks_prefetch.status import sweep
from eks_prefetch.status import table as status_table
from testing.clock import Clock
from testing.deployment import FakeLambdaContext, create_status_table, deployment, load_handler
from testing.ec2 import launch_time_of, run_instance, run_nodes
from testing.ecr import digest_of, fill_repository, page_describe_images_as_ecr_does
from testing.environment import DEPLOYMENT_ENV, DOCUMENT, REGISTRY, STATUS_TABLE
from testing.events import push_event, running_event, status_event
from testing.simulated_queue import SimulatedQueue
from testing.ssm import Agents, Answer, FakeInvocations

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
        agents = Agents(clock).install()
        queue = SimulatedQueue(clock, max_receives=1000, batching_window=5)
        for node in run_nodes(launches):
            agents.online_after[node] = not_ready_polls
            queue.publish(running_event(node), node)
        with ApiCalls().counting() as calls:
            queue.run()
        unsent = [node for node, outcome in queue.outcomes.items() if outcome.sent_at is None]
        if unsent:
            raise AssertionError(f"{len(unsent)} nodes got no command")
        calls.invocations = queue.invocations
        return calls


# --- the status function, per counted invocation ------------------------------------------------------------------


def calls_per_status_event(*, command: str, reported_before: bool = True) -> ApiCalls:
    """One status event of a node's invocation that pulled the newest image, counted by the status function in a
    warm container whose resolution of the newest image an earlier event made (a push's burst of events).

    command: "push" (a fleet command's, or a repair's: no new-node mark), "new-node" (the new-node path's, its
    Comment carrying the launch time), or "new-node-legacy" (sent before the Comment carried it). reported_before:
    the earlier event was this node's own, of the image before (a fleet at its next push), else another node's (a
    fresh node).
    """
    repository = "ml/trainer"
    with deployment(REPOSITORY_NAMES=repository, STATUS_TABLE=STATUS_TABLE):
        create_status_table()
        newest = fill_repository(repository, 2)
        node, other = (run_instance({"eks:cluster-name": DEPLOYMENT_ENV["CLUSTER_NAME"]}) for _ in range(2))
        fake = FakeInvocations().install()
        handler = load_handler("status").lambda_handler
        ended = datetime.now(UTC)

        def counted(instance: str, comment: str, event_id: str, digest: str = newest) -> dict[str, Any]:
            reference = f"{REGISTRY}/{repository}@{digest}"
            output = "\n".join(
                [
                    json.dumps({"image": reference, "status": "pulled", "digest": digest, "seconds": 90.0}),
                    json.dumps({"summary": True, "images": 1, "pulled": 1}),
                ]
            )
            command_id = boto3.client("ssm").send_command(
                DocumentName=DOCUMENT, InstanceIds=[instance], Parameters={"images": [reference]}, Comment=comment
            )["Command"]["CommandId"]
            fake.set(command_id, instance, Answer(stdout=output, ended=ended))
            result = handler(status_event(command_id, instance, "Success", DOCUMENT, event_id), FakeLambdaContext())
            if result.get("result") != "counted":
                raise AssertionError(f"invocation not counted: {result}")
            return result

        launched = datetime.fromisoformat(launch_time_of(node)).strftime("%Y%m%dT%H%M%SZ")
        comment = {
            "push": "prefetch ml/trainer:v1 [evt-0123456789abcdef]",
            "new-node": f"new node launched {launched}: prefetch ml/trainer:v1 [evt-0123456789abcdef]",
            "new-node-legacy": "new node: prefetch ml/trainer:v1 [evt-0123456789abcdef]",
        }[command]
        with contextlib.redirect_stdout(io.StringIO()):
            before = digest_of(f"{repository}-0")  # fill_repository's older image
            counted(node if reported_before else other, "prefetch ml/trainer:v0 [evt-earlier]", "earlier", before)
            with ApiCalls().counting() as calls:
                counted(node, comment, "counted")
        return calls


# --- the status sweep and self-repair ------------------------------------------------------------------------------


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
        fake = FakeInvocations().install()
        Agents(online=set(nodes) | set(lacking)).install()
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
        settings.load.cache_clear()
        with contextlib.redirect_stdout(io.StringIO()), ApiCalls().counting() as calls:
            result = sweep.sweep_and_repair(settings.load(settings.StatusSettings), now=datetime.now(UTC))
        expected = 0 if not events_lost else invocations
        if result["counted"] != expected or result["repair"]["nodes_repaired"] != min(missing, 200):
            raise AssertionError(f"unexpected sweep: {result}")
        return calls
