"""The scheduled sweep, then self-repair: what the status function runs every few minutes.

The sweep counts the terminal invocations of our recent commands whose status event never came (from a persisted
watermark), then looks at the fleet: coverage metrics, and the rows of the nodes seen online kept alive. Self-repair
then sends the nodes that lack a newest image what they lack (``repair``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from eks_prefetch import aws
from eks_prefetch.settings import StatusSettings
from eks_prefetch.status import claims, table
from eks_prefetch.status import metrics as m
from eks_prefetch.status.coverage import FleetView, look_at_fleet
from eks_prefetch.status.deadline import TimeLeft, running_out
from eks_prefetch.status.invocations import NON_TERMINAL, record_invocation
from eks_prefetch.status.repair import RepairInputs, repair
from eks_prefetch.status.reports import RecordingScope
from eks_prefetch.status.table import NodeState, parse_time, timestamp

logger = Logger(child=True)

# ListCommands may show a command sent a moment ago only later: the watermark stays this far behind.
WATERMARK_SAFETY = timedelta(minutes=5)
# A fresh deployment's first sweep looks back this far (not the whole history).
FIRST_SWEEP_LOOKBACK = timedelta(hours=1)
# No step of the sweep (an invocation, a repository's coverage, a TTL write) starts with less than this left; what is
# not done is left to the next sweep (repair, after it, sends while SEND_RESERVE_SECONDS are left).
SWEEP_RESERVE_SECONDS = 30.0
# Counting invocations stops when this share of the time the sweep started with is left: the look at the fleet
# (coverage: at 10,000 nodes and 20 repositories, 200 DescribeInstanceInformation pages and 2,000 BatchGetItems,
# about 70 s in-Region), the TTL refresh and repair come after it, every sweep. What was not counted, the next sweeps
# count (the watermark stays).
FLEET_SHARE = 0.4
# The sweep's schedule (template.yaml, Sweep: rate(5 minutes)): the pace of the TTL refresh.
SWEEP_INTERVAL_SECONDS = 300
# The TTL refresh rewrites at most this many rows a sweep, or more in a fleet too large for it (see refreshes_per_run).
MIN_REFRESHES_PER_SWEEP = 100
# Claims are read 100 a request (BatchGetItem's limit): the sweep looks at its deadline between reads.
_CLAIMS_PER_READ = 100


@dataclass(frozen=True)
class SweepResult:
    watermark: datetime
    next_watermark: datetime
    commands: int
    counted: int
    already_counted: int
    errors: int
    coverage: dict[str, float]
    # Nodes with an invocation the sweep saw unfinished: a command is in flight there.
    in_flight: frozenset[str] = frozenset()

    def as_dict(self) -> dict[str, Any]:
        return {
            "result": "swept",
            "watermark": timestamp(self.watermark),
            "next_watermark": timestamp(self.next_watermark),
            "commands": self.commands,
            "counted": self.counted,
            "already_counted": self.already_counted,
            "errors": self.errors,
            "coverage": self.coverage,
        }


@dataclass
class _CommandTally:
    counted: int = 0
    already: int = 0
    errors: int = 0
    still_open: bool = False
    # The sweep ran out of time within this command: it is looked at again, and so is every command after it.
    out_of_time: bool = False
    # Nodes with an invocation of this command not finished yet.
    in_flight: set[str] = field(default_factory=set)

    def stop(self) -> _CommandTally:
        self.out_of_time = self.still_open = True
        return self


def _sweep_command(
    command: Mapping[str, Any], scope: RecordingScope, now: datetime, time_left: TimeLeft, reserve: float
) -> _CommandTally:
    """Count the final, unclaimed invocations of one command; whether it must be looked at again. No call starts
    with less than ``reserve`` seconds left."""
    settings = scope.settings
    command_id = command["CommandId"]
    tally = _CommandTally(still_open=command.get("Status") in {"Pending", "InProgress", "Cancelling"})
    invocations: list[Mapping[str, Any]] = []
    try:
        for invocation in aws.ssm.list_command_invocations(command_id):
            if running_out(time_left, reserve):
                return tally.stop()
            invocations.append(invocation)
    except Exception:
        # Throttled past botocore's retries, or the like: the next sweep looks again (one retry per schedule).
        logger.exception("sweep could not list a command's invocations", extra={"command_id": command_id})
        tally.errors += 1
        tally.still_open = True
        return tally
    finished = []
    for invocation in invocations:
        if invocation.get("Status") in NON_TERMINAL:
            tally.still_open = True
            tally.in_flight.add(invocation["InstanceId"])
        else:
            finished.append(invocation["InstanceId"])
    for start in range(0, len(finished), _CLAIMS_PER_READ):
        chunk = finished[start : start + _CLAIMS_PER_READ]
        if running_out(time_left, reserve):
            return tally.stop()
        try:
            # The claims of the finished invocations, 100 a request: a sweep's reads grow with pages, not nodes.
            chunk_claims = claims.read_claims(settings, command_id, chunk)
        except Exception:
            logger.exception("sweep could not read a command's claims", extra={"command_id": command_id})
            tally.errors += 1
            tally.still_open = True
            return tally
        for instance_id in chunk:
            if _claimed(chunk_claims.get(instance_id), now, tally):
                continue
            if running_out(time_left, reserve):
                return tally.stop()
            _record(command_id, instance_id, scope, now, tally)
    return tally


def _claimed(claim: claims.Claim | None, now: datetime, tally: _CommandTally) -> bool:
    """Whether an invocation's claim leaves nothing to record now (counted, or being counted)."""
    standing = claim.standing(now) if claim is not None else None
    if standing is claims.Standing.COUNTED:
        tally.already += 1
        return True
    if standing is claims.Standing.IN_PROGRESS:
        # Being counted right now, or by a recording that died: looked at again until it is final.
        tally.still_open = True
        return True
    return False


def _record(command_id: str, instance_id: str, scope: RecordingScope, now: datetime, tally: _CommandTally) -> None:
    try:
        outcome = record_invocation(command_id, instance_id, scope.settings, via="sweep", scope=scope, now=now)
    except Exception:
        # Left for the next sweep: the watermark stays at this command.
        logger.exception(
            "sweep could not record an invocation", extra={"command_id": command_id, "instance_id": instance_id}
        )
        tally.errors += 1
        tally.still_open = True
        return
    if outcome.counted:
        tally.counted += 1
        logger.info("sweep counted an invocation whose event never came", extra=outcome.as_dict())
    elif outcome.result == "pending":
        # Listed as finished, but GetCommandInvocation still says otherwise: its final status comes later.
        tally.still_open = True
        tally.in_flight.add(instance_id)
    elif outcome.result == "in_progress":
        tally.still_open = True
    elif outcome.result == "duplicate":
        tally.already += 1


def load_watermark(settings: StatusSettings, now: datetime) -> datetime:
    stored = table.read_watermark(settings)
    floor = now - timedelta(seconds=settings.sweep_max_lookback_seconds)
    start = stored or now - FIRST_SWEEP_LOOKBACK
    return max(start, floor)


def refreshes_per_run(settings: StatusSettings, rows: int) -> int:
    """How many rows one sweep's TTL refresh rewrites at most: enough that, were every row to fall due at once (half
    its TTL left), all are rewritten within half of what is left, at the sweep's schedule; never fewer than
    MIN_REFRESHES_PER_SWEEP. At 10,000 nodes and 20 repositories (200,000 rows) and the 7-day default TTL: 397."""
    sweeps_before_expiry = max(settings.node_state_ttl_seconds // 2 // SWEEP_INTERVAL_SECONDS, 1)
    return max(MIN_REFRESHES_PER_SWEEP, math.ceil(2 * rows / sweeps_before_expiry))


def refresh_ttl(
    settings: StatusSettings, states: Iterable[NodeState], now: datetime, *, time_left: TimeLeft = None
) -> int:
    """Push back the expiry of the rows of nodes seen online, once half their TTL has passed: the rows nearest their
    expiry first, at most ``refreshes_per_run`` a sweep and none with less than SWEEP_RESERVE_SECONDS left. A row
    refreshed now expires a whole TTL later, so that rows that fell due together spread over the sweeps."""
    states = list(states)
    horizon = int(now.timestamp()) + settings.node_state_ttl_seconds // 2
    due = sorted(
        (state for state in states if state.expires_at < horizon),
        key=lambda state: (state.expires_at, state.instance_id, state.repository),
    )
    bound = refreshes_per_run(settings, len(states))
    refreshed = 0
    for state in due[:bound]:
        if running_out(time_left, SWEEP_RESERVE_SECONDS):
            break
        table.refresh_expiry(settings, state, now)
        refreshed += 1
    if refreshed < len(due):
        logger.info("TTL refresh: the rest falls to the next sweeps", extra={"refreshed": refreshed, "due": len(due)})
    return refreshed


def sweep(
    settings: StatusSettings,
    *,
    now: datetime | None = None,
    time_left: Callable[[], float] | None = None,
    scope: RecordingScope | None = None,
) -> tuple[SweepResult, FleetView]:
    """Count every terminal invocation of our recent commands whose event never came, then measure coverage.

    The watermark moves to the oldest command that still has unfinished (or unprocessed) invocations, or to a few
    minutes before this sweep: every command is looked at until all its invocations are counted. An invocation
    that fails to be recorded is logged and left for the next sweep, which is the retry (no storm: one per schedule).
    """
    now = now or datetime.now(UTC)
    watermark = load_watermark(settings, now)
    scope = scope or RecordingScope.for_sweep(settings)
    oldest_open: datetime | None = None
    commands = counted = already = errors = 0
    in_flight: set[str] = set()
    # Counting leaves the rest of the time to the fleet's look, the TTL refresh and repair.
    counting_reserve = max(SWEEP_RESERVE_SECONDS, FLEET_SHARE * time_left()) if time_left else 0.0
    out_of_time = False

    for command in aws.ssm.list_document_commands(settings.document_name, watermark):
        # The filters are the server's; checked again, so that nothing of another document is ever counted.
        requested = parse_time(command.get("RequestedDateTime"))
        if command.get("DocumentName") != settings.document_name or requested is None or requested < watermark:
            continue
        if running_out(time_left, counting_reserve):
            out_of_time = True
            break
        commands += 1
        tally = _sweep_command(command, scope, now, time_left, counting_reserve)
        counted += tally.counted
        already += tally.already
        errors += tally.errors
        in_flight |= tally.in_flight
        if tally.still_open:
            oldest_open = min(filter(None, [oldest_open, requested]))
        if tally.out_of_time:
            out_of_time = True
            break
    if out_of_time:
        # ListCommands promises no order: the watermark cannot move past commands not looked at.
        oldest_open = watermark
        logger.warning("sweep out of time, the watermark stays", extra={"watermark": timestamp(watermark)})

    next_watermark = max(min(filter(None, [oldest_open, now - WATERMARK_SAFETY])), watermark)
    table.write_watermark(settings, next_watermark)

    fleet = look_at_fleet(settings, scope.newest, time_left=time_left, reserve=SWEEP_RESERVE_SECONDS, now=now)
    if fleet.complete or fleet.online:
        m.emit_coverage_metrics(fleet.coverages, settings, online=len(fleet.online), unsupported=len(fleet.unsupported))
    refresh_ttl(settings, fleet.states.values(), now, time_left=time_left)
    result = SweepResult(
        watermark=watermark,
        next_watermark=next_watermark,
        commands=commands,
        counted=counted,
        already_counted=already,
        errors=errors,
        coverage=fleet.percent_by_repository,
        in_flight=frozenset(in_flight),
    )
    return result, fleet


def sweep_and_repair(
    settings: StatusSettings,
    *,
    now: datetime | None = None,
    time_left: Callable[[], float] | None = None,
    lambda_context: LambdaContext | None = None,
) -> dict[str, Any]:
    """The scheduled run: count what events missed and measure coverage, then repair the gaps it found."""
    now = now or datetime.now(UTC)
    scope = RecordingScope.for_sweep(settings)
    swept, fleet = sweep(settings, now=now, time_left=time_left, scope=scope)
    repaired = repair(
        RepairInputs(fleet, swept.in_flight, scope.newest),
        settings,
        now=now,
        time_left=time_left,
        lambda_context=lambda_context,
    )
    return {**swept.as_dict(), "repair": repaired.as_dict()}
