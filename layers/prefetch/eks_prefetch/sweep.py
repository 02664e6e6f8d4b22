"""The scheduled sweep, then self-repair: what the status function runs every few minutes.

The sweep counts the terminal invocations of our recent commands whose status event never came (from a persisted
watermark), then looks at the fleet: coverage metrics, and the rows of the nodes seen online kept alive. Self-repair
then sends the nodes that lack a newest image what they lack (``repair``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from eks_prefetch import aws
from eks_prefetch import status_metrics as m
from eks_prefetch import status_table as table
from eks_prefetch.coverage import FleetView, look_at_fleet
from eks_prefetch.invocations import NON_TERMINAL, RecordingScope, record_invocation
from eks_prefetch.repair import RepairInputs, repair
from eks_prefetch.settings import Settings
from eks_prefetch.status_table import NodeState, parse_time, require_status_table, timestamp

logger = Logger(child=True)

# ListCommands may show a command sent a moment ago only later: the watermark stays this far behind.
WATERMARK_SAFETY = timedelta(minutes=5)
# A fresh deployment's first sweep looks back this far (not the whole history).
FIRST_SWEEP_LOOKBACK = timedelta(hours=1)
# The sweep stops taking new commands when the Lambda has less than this left; the watermark keeps the rest.
SWEEP_RESERVE_SECONDS = 30.0


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
    # Nodes with an invocation of this command not finished yet.
    in_flight: set[str] = field(default_factory=set)


def _sweep_command(command: Mapping[str, Any], scope: RecordingScope, now: datetime) -> _CommandTally:
    """Count the final, unclaimed invocations of one command; whether it must be looked at again."""
    settings = scope.settings
    command_id = command["CommandId"]
    tally = _CommandTally(still_open=command.get("Status") in {"Pending", "InProgress", "Cancelling"})
    try:
        invocations = list(aws.ssm.list_command_invocations(command_id))
    except Exception:
        # Throttled past botocore's retries, or the like: the next sweep looks again (one retry per schedule).
        logger.exception("sweep could not list a command's invocations", extra={"command_id": command_id})
        tally.errors += 1
        tally.still_open = True
        return tally
    try:
        # The claims of the finished invocations, 100 a request: a sweep's reads grow with pages, not one per node.
        finished = [
            invocation["InstanceId"] for invocation in invocations if invocation.get("Status") not in NON_TERMINAL
        ]
        claims = table.read_claims(settings, command_id, finished)
    except Exception:
        logger.exception("sweep could not read a command's claims", extra={"command_id": command_id})
        tally.errors += 1
        tally.still_open = True
        return tally
    for invocation in invocations:
        instance_id = invocation["InstanceId"]
        if invocation.get("Status") in NON_TERMINAL:
            tally.still_open = True
            tally.in_flight.add(instance_id)
            continue
        standing = claims[instance_id].standing(now) if instance_id in claims else None
        if standing is table.Standing.COUNTED:
            tally.already += 1
            continue
        if standing is table.Standing.IN_PROGRESS:
            # Being counted right now, or by a recording that died: looked at again until it is final.
            tally.still_open = True
            continue
        try:
            outcome = record_invocation(command_id, instance_id, settings, via="sweep", scope=scope, now=now)
        except Exception:
            # Left for the next sweep: the watermark stays at this command.
            logger.exception(
                "sweep could not record an invocation", extra={"command_id": command_id, "instance_id": instance_id}
            )
            tally.errors += 1
            tally.still_open = True
            continue
        if outcome.counted:
            tally.counted += 1
            logger.info("sweep counted an invocation whose event never came", extra=outcome.as_dict())
        elif outcome.result in {"pending", "in_progress"}:
            tally.still_open = True
        elif outcome.result == "duplicate":
            tally.already += 1
    return tally


def load_watermark(settings: Settings, now: datetime) -> datetime:
    stored = table.read_watermark(settings)
    floor = now - timedelta(seconds=settings.sweep_max_lookback_seconds)
    start = stored or now - FIRST_SWEEP_LOOKBACK
    return max(start, floor)


def refresh_ttl(settings: Settings, states: Iterable[NodeState], now: datetime) -> int:
    """Push back the expiry of the rows of nodes seen online, once half their TTL has passed (few writes)."""
    refreshed = 0
    horizon = int(now.timestamp()) + settings.node_state_ttl_seconds // 2
    for state in states:
        if state.expires_at >= horizon:
            continue
        table.refresh_expiry(settings, state, now)
        refreshed += 1
    return refreshed


def sweep(
    settings: Settings,
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
    require_status_table(settings)
    now = now or datetime.now(UTC)
    watermark = load_watermark(settings, now)
    scope = scope or RecordingScope.for_sweep(settings)
    oldest_open: datetime | None = None
    commands = counted = already = errors = 0
    in_flight: set[str] = set()

    for command in aws.ssm.list_document_commands(settings.document_name, watermark):
        # The filters are the server's; checked again, so that nothing of another document is ever counted.
        requested = parse_time(command.get("RequestedDateTime"))
        if command.get("DocumentName") != settings.document_name or requested is None or requested < watermark:
            continue
        if time_left is not None and time_left() < SWEEP_RESERVE_SECONDS:
            # ListCommands promises no order: the watermark cannot move past commands not looked at.
            oldest_open = watermark
            logger.warning("sweep out of time, the watermark stays", extra={"watermark": timestamp(watermark)})
            break
        commands += 1
        tally = _sweep_command(command, scope, now)
        counted += tally.counted
        already += tally.already
        errors += tally.errors
        in_flight |= tally.in_flight
        if tally.still_open:
            oldest_open = min(filter(None, [oldest_open, requested]))

    next_watermark = max(min(filter(None, [oldest_open, now - WATERMARK_SAFETY])), watermark)
    table.write_watermark(settings, next_watermark)

    fleet = look_at_fleet(settings, scope.newest)
    m.emit_coverage_metrics(fleet.coverages, settings)
    refresh_ttl(settings, fleet.states.values(), now)
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
    settings: Settings,
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
