"""Self-repair isolates any per-node refusal of SSM, whatever its error code, and keeps its reserve of time before
the deadline (issue 15, item 14, and the unguarded reserve of repair).

Faults are raised inside moto's SSM backend, so that they travel botocore's real error and retry path. Doubles:
``FakeInvocations`` and ``Agents`` (testing/ssm.py) for moto's SSM gaps.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import boto3
import pytest
from moto.core.exceptions import ServiceException
from moto.ssm.models import ssm_backends

from eks_prefetch import aws, settings
from eks_prefetch.settings import StatusSettings, load
from eks_prefetch.status import repair, sweep
from eks_prefetch.status import table as status_table
from eks_prefetch.status.reports import RecordingScope
from testing.ecr import at
from testing.environment import ACCOUNT, REGION, STATUS_TABLE
from tests.faults import ThrottlingException
from tests.integration.test_repair import GRACE, node_ids

NOW = at(10) + GRACE + timedelta(minutes=1)


@pytest.fixture(autouse=True)
def env(status_env, monkeypatch):
    monkeypatch.setenv("REPAIR_ENABLED", "true")
    monkeypatch.setenv("REPAIR_GRACE_SECONDS", str(int(GRACE.total_seconds())))
    settings.load.cache_clear()


class AccessDeniedException(ServiceException):
    code = "AccessDeniedException"
    message = "User is not authorized to perform: ssm:SendCommand on resource: managed-instance/mi-0123"


def refuse(refused: set[str], error: type[ServiceException]) -> list[list[str]]:
    """moto's SSM raises ``error`` for every SendCommand naming one of ``refused`` (all of them if empty), as SSM
    refuses a whole command. Returns the instance ids of every SendCommand that reached it, retries included."""
    backend = ssm_backends[ACCOUNT][REGION]
    real = backend.send_command
    calls: list[list[str]] = []

    def send_command(*args: Any, **kwargs: Any) -> Any:
        instance_ids = list(kwargs.get("instance_ids") or [])
        calls.append(instance_ids)
        if not refused or refused & set(instance_ids):
            raise error()
        return real(*args, **kwargs)

    backend.send_command = send_command
    return calls


def server_errors() -> list[list[str]]:
    """Every SendCommand answered HTTP 500 at botocore's level (moto serializes SSM's InternalServerError as a 400:
    the model marks it no fault). Returns the instance ids of every SendCommand that went out, retries included."""
    from botocore.awsrequest import AWSResponse  # noqa: PLC0415

    calls: list[list[str]] = []

    class Body:
        def stream(self, **_: Any) -> Any:
            yield b'{"__type": "InternalServerError", "message": "internal error"}'

    def answer(request: Any, **_: Any) -> AWSResponse:
        calls.append(json.loads(request.body)["InstanceIds"])
        return AWSResponse(request.url, 500, {"Content-Type": "application/x-amz-json-1.1"}, Body())

    aws.client("ssm").meta.events.register_first("before-send.ssm.SendCommand", answer)
    return calls


def online_long_ago(fleet, nodes: list[str]) -> None:
    fleet.online = set(nodes)
    for node in nodes:
        fleet.registered[node] = at(-600)  # long registered: no grace, and no EC2 look-up for a hybrid node


def sent_to() -> list[str]:
    return sorted(
        node for command in boto3.client("ssm").list_commands()["Commands"] for node in command["InstanceIds"]
    )


def test_an_access_denied_hybrid_node_does_not_hold_back_its_group_of_50(fake, fleet, images):
    """One hybrid mi- node that the role may not send to (AccessDeniedException, not InvalidInstanceId) among 49
    healthy nodes: the group is halved until it is alone; the 49 are repaired in the first sweep, and the refused
    node backs off with nothing in flight."""
    healthy = node_ids(49)
    hybrid = "mi-0123456789abcdef0"
    online_long_ago(fleet, [*healthy, hybrid])
    calls = refuse({hybrid}, AccessDeniedException)

    result = sweep.sweep_and_repair(load(StatusSettings), now=NOW)

    assert sent_to() == sorted(healthy)
    assert result["repair"]["nodes_repaired"] == 49
    assert result["repair"]["errors"] == 1
    assert len(calls) <= 2 * 7 + 1  # halving 50 down to one: about 2 x log2(50) sends
    row = aws.dynamodb.get_item(STATUS_TABLE, status_table.node_row_key(hybrid))
    assert row["repair_attempts"] == 1
    assert "repair_sent_at" not in row
    calls.clear()
    sweep.sweep_and_repair(load(StatusSettings), now=NOW + timedelta(minutes=5))
    assert calls == []  # backed off; the others have their repair in flight


@pytest.mark.parametrize("fault", ["throttling", "5xx"])
def test_throttling_and_server_errors_are_not_refusals_no_halving(fake, fleet, images, fault):
    """Throttled past botocore's retries, or a 5xx (not retried: SendCommand is not idempotent): the group fails
    whole (or, after a 5xx, is looked up among the commands sent), never split into a storm of smaller sends, and no
    node backs off as refused."""
    nodes = node_ids(100)
    online_long_ago(fleet, nodes)
    calls = refuse(set(), ThrottlingException) if fault == "throttling" else server_errors()

    result = sweep.sweep_and_repair(load(StatusSettings), now=NOW)

    assert {len(call) for call in calls} == {50}
    assert len({tuple(call) for call in calls}) == 2
    if fault == "throttling":
        assert (result["repair"]["errors"], result["repair"]["nodes_repaired"]) == (2, 0)
    assert not any(
        "repair_next_at" in (aws.dynamodb.get_item(STATUS_TABLE, status_table.node_row_key(node)) or {})
        and "repair_sent_at" not in aws.dynamodb.get_item(STATUS_TABLE, status_table.node_row_key(node))
        for node in nodes
    )


def test_a_refusal_of_every_node_is_bounded_per_sweep(fake, fleet, images):
    """A refusal that is not about one node (the role lost ssm:SendCommand on the document) refuses every send:
    the halving stops at the sweep's bound of refused sends."""
    online_long_ago(fleet, node_ids(200))
    calls = refuse(set(), AccessDeniedException)

    sweep.sweep_and_repair(load(StatusSettings), now=NOW)

    assert len(calls) == repair.MAX_REFUSED_SENDS_PER_SWEEP


def test_repair_sends_nothing_with_less_than_its_reserve_left(fake, fleet, images, sent):
    """Each SSM or DynamoDB call takes 4 s on the invocation's clock: repair starts a send only while at least
    SEND_RESERVE_SECONDS are left, and stops there."""
    online_long_ago(fleet, node_ids(200))
    config = load(StatusSettings)
    scope = RecordingScope.for_sweep(config)
    swept, fleet_view = sweep.sweep(config, now=NOW, scope=scope)
    clock = {"left": repair.SEND_RESERVE_SECONDS + 30.0}
    left_at_send: list[float] = []

    def tick(**_: Any) -> None:
        clock["left"] -= 4.0

    for service in ("ssm", "dynamodb"):
        aws.client(service).meta.events.register("before-call", tick)
    aws.client("ssm").meta.events.register(
        "provide-client-params.ssm.SendCommand", lambda **_: left_at_send.append(clock["left"])
    )

    inputs = repair.RepairInputs(fleet_view, swept.in_flight, scope.newest)
    result = repair.repair(inputs, config, now=NOW, time_left=lambda: clock["left"])

    # One send (its idempotency record and attempt counter, SendCommand, 50 repair rows) takes the time left below
    # the reserve: of the four commands due, the first is sent, the rest are the next sweep's.
    assert result.commands_sent == len(sent) == 1
    assert min(left_at_send) >= repair.SEND_RESERVE_SECONDS - 2 * 4.0  # begun with the reserve (less its look-ups)

    clock["left"] = repair.SEND_RESERVE_SECONDS - 0.1
    sent.clear()
    late = repair.repair(inputs, config, now=NOW + timedelta(minutes=5), time_left=lambda: clock["left"])
    assert (late.commands_sent, sent) == (0, [])
