"""A sweep that watches its deadline everywhere and a TTL refresh bounded per run (issue 15, items 12 and 13), and
two changes no test guarded: an invocation still pending in GetCommandInvocation holds the watermark, and `make
status` exits 1 below 100% coverage.

Time: every AWS call the code makes through botocore advances a fake clock by a fixed in-Region latency
(``Latency``), and the sweep's ``time_left`` reads it; nothing sleeps. Doubles: ``FakeInvocations`` and ``Agents``
(testing/ssm.py) for moto's SSM gaps.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest

from eks_prefetch import aws, settings
from eks_prefetch.settings import StatusSettings, load
from eks_prefetch.status import sweep
from eks_prefetch.status import table as status_table
from prefetchctl import status as report
from testing.cloudformation import DeployedStacks
from testing.environment import CLUSTER, DOCUMENT, STATUS_TABLE
from testing.output import total
from testing.ssm import Answer
from tests.integration.conftest import INFERENCE, TRAINER
from tests.integration.test_status import good_output, ref
from tests.integration.test_status_report import FUNCTION, STACK, deploy_stack

TIMEOUT = 300.0  # the status function's timeout (template.yaml)


@pytest.fixture(autouse=True)
def env(status_env, monkeypatch):
    # Counting and coverage: self-repair has its own deadline tests (test_repair_refusals.py).
    monkeypatch.setenv("REPAIR_ENABLED", "false")
    settings.load.cache_clear()


class Latency:
    """The invocation's clock: each AWS call through botocore takes ``seconds``."""

    def __init__(self, seconds: float, budget: float = TIMEOUT) -> None:
        self.seconds = seconds
        self.budget = budget
        self.elapsed = 0.0
        for service in ("ssm", "dynamodb", "ecr", "ec2"):
            aws.client(service).meta.events.register("before-call", self.tick)

    def tick(self, **_: Any) -> None:
        self.elapsed += self.seconds

    def time_left(self) -> float:
        return self.budget - self.elapsed

    def new_invocation(self, budget: float = TIMEOUT) -> None:
        self.elapsed, self.budget = 0.0, budget


def node_ids(count: int) -> list[str]:
    return [f"i-{n:017x}" for n in range(count)]


def send(nodes: list[str], digest: str) -> str:
    return boto3.client("ssm").send_command(
        DocumentName=DOCUMENT, InstanceIds=nodes, Parameters={"images": [ref(TRAINER, digest)]}
    )["Command"]["CommandId"]


def requested_at(command_id: str) -> str:
    command = boto3.client("ssm").list_commands(CommandId=command_id)["Commands"][0]
    return status_table.timestamp(command["RequestedDateTime"])


# --- 12: the deadline, inside a command's invocations and in coverage -----------------------------------------------


def test_a_backlog_of_unclaimed_invocations_is_counted_over_sweeps_each_within_its_timeout(fake, fleet, images, capsys):
    """60 invocations whose events were lost, at 1 s a call (about 7 calls each: more than one sweep's 300 s). Each
    sweep stops counting in time to measure coverage, finishes before its timeout, keeps its watermark at the
    command; over a few sweeps every invocation is counted exactly once."""
    nodes = node_ids(60)
    fleet.online = set(nodes)
    digest = images[TRAINER]
    command_id = send(nodes, digest)
    for node in nodes:
        fake.set(
            command_id, node, Answer("Success", "Success", good_output([(ref(TRAINER, digest), "pulled", digest)]))
        )
    clock = Latency(1.0)
    capsys.readouterr()

    first = sweep.sweep_and_repair(load(StatusSettings), time_left=clock.time_left)

    assert clock.elapsed < TIMEOUT - sweep.SWEEP_RESERVE_SECONDS
    assert 0 < first["counted"] < len(nodes)
    assert first["next_watermark"] <= requested_at(command_id)
    assert set(first["coverage"]) == {TRAINER, INFERENCE}  # the dashboard is not blank
    counted = first["counted"]
    for _ in range(5):
        clock.new_invocation()
        later = sweep.sweep_and_repair(load(StatusSettings), time_left=clock.time_left)
        assert clock.elapsed < TIMEOUT - sweep.SWEEP_RESERVE_SECONDS
        counted += later["counted"]
        if counted == len(nodes):
            break
    assert counted == len(nodes)
    assert total(capsys.readouterr().out, "Invocations", ClusterName=CLUSTER) == len(nodes)


def test_coverage_measures_what_it_has_time_for_and_the_next_sweep_the_rest(fake, fleet, images, capsys):
    fleet.online = set(node_ids(2))
    clock = Latency(8.0, budget=60.0)

    cut = sweep.sweep_and_repair(load(StatusSettings), time_left=clock.time_left)

    assert set(cut["coverage"]) == {TRAINER}  # inference waits: less than the reserve was left
    assert clock.elapsed <= 60.0 - sweep.SWEEP_RESERVE_SECONDS + 2 * 8.0  # one repository's reads past the check
    clock.new_invocation()
    assert set(sweep.sweep_and_repair(load(StatusSettings), time_left=clock.time_left)["coverage"]) == {
        TRAINER,
        INFERENCE,
    }


def test_an_invocation_listed_as_finished_but_still_pending_holds_the_watermark(fake, fleet, images, monkeypatch):
    """ListCommandInvocations already says Success, GetCommandInvocation still InProgress (they are not read at the
    same moment): not counted, and the watermark stays at its command, so that the next sweep counts it."""
    (node,) = node_ids(1)
    digest = images[TRAINER]
    command_id = send([node], digest)
    fake.set(command_id, node, Answer("InProgress", "InProgress", ""))
    listed = fake.list_command_invocations

    def listed_finished(command_id: str, ssm: Any = None):
        for invocation in listed(command_id):
            yield {**invocation, "Status": "Success"}

    monkeypatch.setattr(aws.ssm, "list_command_invocations", listed_finished)

    # Past the watermark's safety lag after the command, so that only the pending invocation can hold it there.
    later = datetime.now(UTC) + timedelta(minutes=10)
    pending = sweep.sweep_and_repair(load(StatusSettings), now=later)

    assert pending["counted"] == 0
    assert pending["next_watermark"] <= requested_at(command_id)
    fake.set(command_id, node, Answer("Success", "Success", good_output([(ref(TRAINER, digest), "pulled", digest)])))
    assert sweep.sweep_and_repair(load(StatusSettings), now=later)["counted"] == 1


# --- 13: the TTL refresh, bounded per run ---------------------------------------------------------------------------


def rows_due(nodes: list[str], digest: str, now: datetime) -> dict[tuple[str, str], int]:
    """Rows for every node and repository, each a day from expiring (past half their 7-day TTL), one second apart."""
    expiry = {}
    client = boto3.client("dynamodb")
    items = []
    for index, (node, repository) in enumerate(
        (node, repository) for node in nodes for repository in (TRAINER, INFERENCE)
    ):
        expiry[(node, repository)] = int(now.timestamp()) + 86_400 + index
        items.append(
            {
                **status_table.node_key(node, repository),
                "instance_id": node,
                "repository": repository,
                "digest": digest,
                "expires_at": expiry[(node, repository)],
            }
        )
    for start in range(0, len(items), 25):
        client.batch_write_item(
            RequestItems={
                STATUS_TABLE: [
                    {"PutRequest": {"Item": aws.dynamodb.to_item(item)}} for item in items[start : start + 25]
                ]
            }
        )
    return expiry


@pytest.fixture
def refreshes(status_env) -> list[dict[str, Any]]:
    """The keys of every TTL refresh (UpdateItem of expires_at alone) the code sends."""
    keys: list[dict[str, Any]] = []

    def capture(params: dict[str, Any], **_: Any) -> None:
        if params.get("UpdateExpression") == "SET expires_at = :e":
            keys.append(params["Key"])

    aws.client("dynamodb").meta.events.register("provide-client-params.dynamodb.UpdateItem", capture)
    return keys


def test_the_ttl_refresh_is_spread_over_sweeps_nearest_expiry_first(fake, fleet, images, refreshes):
    """300 rows fall due together (150 nodes, 2 repositories): each sweep rewrites at most its bound (100 here),
    those nearest their expiry first; three sweeps refresh them all, the fourth nothing."""
    nodes = node_ids(150)
    fleet.online = set(nodes)
    now = datetime.now(UTC)
    expiry = rows_due(nodes, images[TRAINER], now)
    assert sweep.refreshes_per_run(load(StatusSettings), len(expiry)) == sweep.MIN_REFRESHES_PER_SWEEP == 100

    per_sweep = []
    for _ in range(4):
        before = len(refreshes)
        sweep.sweep_and_repair(load(StatusSettings), now=now)
        per_sweep.append(len(refreshes) - before)

    assert per_sweep == [100, 100, 100, 0]
    first = {(key["pk"]["S"].removeprefix("NODE#"), key["sk"]["S"].removeprefix("REPO#")) for key in refreshes[:100]}
    assert first == set(sorted(expiry, key=expiry.get)[:100])


@pytest.mark.parametrize("ttl_days", [1, 7, 30, 365])
@pytest.mark.parametrize("rows", [10, 20_000, 200_000])
def test_the_bound_refreshes_every_row_well_before_it_expires(monkeypatch, deployment_env, ttl_days, rows):
    """Were every row to fall due at once (half its TTL left), the bound rewrites them all within half of what is
    left, at the sweep's schedule: none expires. 200,000 rows (10,000 nodes x 20 repositories) at 7 days: 397."""
    monkeypatch.setenv("NODE_STATE_TTL_SECONDS", str(ttl_days * 86_400))
    settings.load.cache_clear()
    bound = sweep.refreshes_per_run(load(StatusSettings), rows)
    sweeps_left = ttl_days * 86_400 // 2 // sweep.SWEEP_INTERVAL_SECONDS

    assert bound * sweeps_left // 2 >= rows
    assert bound >= sweep.MIN_REFRESHES_PER_SWEEP
    if (ttl_days, rows) == (7, 200_000):
        assert bound == 397


def test_the_ttl_refresh_stops_at_the_reserve(fake, fleet, images, refreshes):
    nodes = node_ids(20)
    fleet.online = set(nodes)
    now = datetime.now(UTC)
    rows_due(nodes, images[TRAINER], now)
    states = status_table.read_node_states(load(StatusSettings), nodes, (TRAINER, INFERENCE)).values()
    clock = Latency(1.0, budget=sweep.SWEEP_RESERVE_SECONDS + 9.5)  # ten writes begin with the reserve left

    refreshed = sweep.refresh_ttl(load(StatusSettings), states, now, time_left=clock.time_left)

    assert refreshed == len(refreshes) == 10


# --- `make status` exits 1 below 100% ------------------------------------------------------------------------------


def test_make_status_exits_1_when_any_repository_is_below_100_percent(fake, fleet, images, monkeypatch):
    """Trainer 100%, inference 50%: not full coverage, whatever the percentage."""
    deploy_stack()
    DeployedStacks().exists(STACK, {"StatusFunctionName": FUNCTION, "PrefetchDocumentName": DOCUMENT})
    both, one = node_ids(2)
    fleet.online = {both, one}
    for node, repositories in ((both, (TRAINER, INFERENCE)), (one, (TRAINER,))):
        for repository in repositories:
            status_table.record_held(
                load(StatusSettings),
                node,
                repository,
                digest=images[repository],
                status="pulled",
                command_id="c",
                at=datetime.now(UTC),
                pushed_at=None,
            )
    out, err = io.StringIO(), io.StringIO()

    code = report.main(["--stack", STACK], out=out, err=err)

    assert "coverage: 50.0% (1/2 nodes)" in out.getvalue()
    assert code == 1
    assert "coverage below 100%: ml/inference" in out.getvalue()
