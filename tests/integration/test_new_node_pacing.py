"""A scale-out's new nodes share the registry path's budget (prefetch/pacing.py): as many pull at once as the budget
carries, the next ones wait for their slot through the queue, none reserves twice, and pacing never costs a node its
images.

The node-launch handler against moto, its queue driven as Lambda's event source drives it (testing/sqs.py
``LaunchQueue``); time moves with time-machine. Both watched repositories hold a 3.5 GB image (moto gives the
manifest's config size as the image's size, testing/ecr.py), and the budget is 2.5 Gbit/s (312.5 MB/s): a node's run
of 7 GB takes ~73 s at a pull's 97 MB/s, so 3 nodes pull at once and the next starts every ~24 s.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from botocore.exceptions import ClientError

from eks_prefetch import aws
from eks_prefetch.prefetch import pacing
from eks_prefetch.settings import load
from testing.deployment import load_handler
from testing.ec2 import NODE_TAGS, run_instance
from testing.ecr import at, create_repository, push_image
from testing.environment import CLUSTER, TABLE
from testing.events import running_event
from testing.output import total
from testing.sqs import LaunchQueue
from testing.ssm import Agents

START = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
GIGABYTES = 1_000_000_000
# A node's run: 2 x 0.2 s + 7 GB / 97 MB/s = 72.6 s; 3 at once within 312.5 MB/s (4 would ask 386); one every
# 72.6 / 3 s.
RUN_SECONDS = 0.4 + 7e9 / 97e6
INTERVAL = RUN_SECONDS / 3


@pytest.fixture
def clock() -> Iterator[Any]:
    with time_machine.travel(START, tick=False) as traveller:
        yield traveller


@pytest.fixture
def env(deployment_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGISTRY_BANDWIDTH_GBPS", "2.5")
    monkeypatch.setenv("NODE_LAUNCH_MAX_RECEIVES", "5")
    load.cache_clear()


@pytest.fixture
def big_images(env: None, aws_mock: None, clock: Any) -> None:
    for repository in ("ml/trainer", "ml/inference"):
        create_repository(repository)
        push_image(repository, f"{repository}-big", tag="v1", pushed_at=at(1), size=int(3.5 * GIGABYTES))


@pytest.fixture
def queue(big_images: None, lambda_context: Any) -> LaunchQueue:
    return LaunchQueue(load_handler("node_launch").lambda_handler, lambda_context, max_receives=5)


@pytest.fixture
def visibility(aws_mock: None) -> list[int]:
    timeouts: list[int] = []
    aws.client("sqs").meta.events.register(
        "provide-client-params.sqs.ChangeMessageVisibility",
        lambda params, **_: timeouts.append(params["VisibilityTimeout"]),
    )
    return timeouts


@pytest.fixture
def sent(aws_mock: None) -> list[str]:
    """The instance each SendCommand went to, in order."""
    nodes: list[str] = []
    aws.client("ssm").meta.events.register(
        "provide-client-params.ssm.SendCommand", lambda params, **_: nodes.extend(params["InstanceIds"])
    )
    return nodes


def launch(queue: LaunchQueue, agents: Agents, count: int) -> list[str]:
    nodes = []
    for _ in range(count):
        node = run_instance(NODE_TAGS)
        agents.online.add(node)
        queue.publish(running_event(node))
        nodes.append(node)
    return nodes


def schedule() -> float:
    item = aws.dynamodb.get_item(TABLE, pacing.SCHEDULE_KEY) or {}
    return float(item.get("tat", Decimal(0)))


def failed(response: dict[str, Any] | None) -> int:
    return len((response or {}).get("batchItemFailures", []))


def deliver(queue: LaunchQueue, clock: Any) -> dict[str, Any] | None:
    """The queue's next delivery. moto shows a message only once the clock is past its visibility: with the clock
    stopped, a millisecond passes after the waiting messages are made visible."""
    queue.source.time_passes()
    clock.shift(timedelta(milliseconds=1))
    return queue.deliver()


def test_a_burst_pulls_as_many_at_once_as_the_budget_carries_then_one_per_slot(
    queue, agents, clock, visibility, sent, capsys
):
    nodes = launch(queue, agents, 5)

    assert failed(deliver(queue, clock)) == 2
    assert sent == nodes[:3]  # 3 x 7 GB over ~73 s each: 289 MB/s of the 312.5
    assert visibility == [25, 49]  # the 4th and 5th nodes' slots, one interval apart
    printed = capsys.readouterr().out
    dimensions = {"ClusterName": CLUSTER, "service": "test"}  # the test deployment's service name
    assert total(printed, "NodesWaitingForBandwidth", **dimensions) == 2
    assert total(printed, "NodesNotReady", **dimensions) == 0
    assert schedule() == pytest.approx(START.timestamp() + 5 * INTERVAL, abs=0.01)

    clock.shift(timedelta(seconds=25))
    assert failed(deliver(queue, clock)) == 1
    assert sent == nodes[:4]
    # The 5th came back early (the queue delivers what is visible): it waits for the slot it holds, reserving nothing.
    assert visibility == [25, 49, 24]
    assert schedule() == pytest.approx(START.timestamp() + 5 * INTERVAL, abs=0.01)

    clock.shift(timedelta(seconds=25))
    assert failed(deliver(queue, clock)) == 0
    assert sent == nodes
    assert deliver(queue, clock) is None
    assert queue.dead_letters() == []


def test_the_last_delivery_sends_whatever_the_schedule_says(queue, agents, clock, visibility, sent):
    """Pacing never costs a node its images: the receive the redrive policy allows last sends, slot or not."""
    nodes = launch(queue, agents, 4)
    deliver(queue, clock)
    assert sent == nodes[:3]

    for _receive in range(2, 5):  # early, each time: its slot is still ahead
        assert failed(deliver(queue, clock)) == 1
    assert sent == nodes[:3]

    assert failed(deliver(queue, clock)) == 0  # the 5th receive, the last
    assert sent == nodes
    assert queue.dead_letters() == []


def test_a_user_set_count_is_the_number_of_new_nodes_pulling_at_once(queue, agents, clock, monkeypatch, sent):
    monkeypatch.setenv("MAX_CONCURRENCY", "2")
    load.cache_clear()
    nodes = launch(queue, agents, 4)

    assert failed(deliver(queue, clock)) == 2

    assert sent == nodes[:2]


def test_a_node_on_its_own_is_not_held(queue, agents, clock, visibility, sent):
    """Once a burst's slots have passed, the schedule restarts from now: a lone launch sends at once."""
    launch(queue, agents, 4)
    deliver(queue, clock)
    clock.shift(timedelta(hours=1))
    deliver(queue, clock)
    (alone,) = launch(queue, agents, 1)

    assert failed(deliver(queue, clock)) == 0

    assert sent[-1] == alone
    assert schedule() == pytest.approx(START.timestamp() + 3600 + INTERVAL, abs=0.01)


def test_without_the_schedule_the_node_is_sent_its_command_now(queue, agents, clock, sent, monkeypatch, caplog):
    """DynamoDB refuses the schedule's writes (throttled past botocore's retries, say): the node is not kept waiting
    for the queue's visibility timeout; the schedule is a budget guard."""
    real = aws.dynamodb.update_item

    def refusing(table: str, key: Any, *args: Any, **kwargs: Any) -> Any:
        if key == pacing.SCHEDULE_KEY:
            raise ClientError({"Error": {"Code": "ProvisionedThroughputExceededException"}}, "UpdateItem")
        return real(table, key, *args, **kwargs)

    monkeypatch.setattr(aws.dynamodb, "update_item", refusing)
    (node,) = launch(queue, agents, 1)

    assert failed(deliver(queue, clock)) == 0

    assert sent == [node]
    assert "new-node schedule not available: sending now" in caplog.text
