"""Self-repair: every online node converges to the newest images, even when an event was lost or a pull failed.

After each sweep has counted invocations and measured coverage, the nodes that lack a newest digest are sent
exactly what they lack, by instance id, with the command builder, document, safety settings and at-most-once send
of the other paths. What keeps this from doing harm:

- nothing within the grace period after a push (the fleet command is still working through its waves) or after a
  node's registration (the node-launch path is at work);
- nothing to a node with a command still in flight: an invocation the sweep saw unfinished, or a repair sent to it
  that it has not reported on yet;
- a node that keeps failing backs off exponentially, up to a cap, recorded in its state row;
- at most ``repair_max_nodes_per_sweep`` nodes a sweep, oldest gap first;
- never an image older than what the node holds;
- the idempotency key names the sweep window, so a repeated or overlapping sweep sends nothing twice.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from eks_prefetch import aws
from eks_prefetch.images import ResolvedImage
from eks_prefetch.prefetch.commands import image_batches, send_command_request
from eks_prefetch.prefetch.resolution import NewestImages
from eks_prefetch.prefetch.sending import send_once
from eks_prefetch.settings import StatusSettings
from eks_prefetch.status import metrics as m
from eks_prefetch.status import table
from eks_prefetch.status.coverage import FleetView, RepositoryCoverage
from eks_prefetch.status.deadline import running_out
from eks_prefetch.status.table import NodeState, RepairState, parse_time, timestamp

logger = Logger(child=True)

# The sweep runs every 5 minutes: the first backoff skips at least one sweep.
BACKOFF_BASE_SECONDS = 600
# SSM's limit of instance ids in one SendCommand.
MAX_INSTANCES_PER_COMMAND = 50
# The window a repair's idempotency key names: the sweep's schedule.
REPAIR_WINDOW_SECONDS = 300
# A repair is not started with less time left than this: one send, its look-ups, and the state update.
SEND_RESERVE_SECONDS = 20.0
# Refused sends a sweep makes at most. Halving isolates one refused node in about 2 x log2(50) = 12 sends; a refusal
# of every node (the document or the role, not a node) would cost 2 x 50 - 1 sends a group: the rest waits.
MAX_REFUSED_SENDS_PER_SWEEP = 100


def backoff_seconds(attempts: int, settings: StatusSettings) -> int:
    """How long after its ``attempts``-th repair a node waits before the next: doubling, capped."""
    return min(BACKOFF_BASE_SECONDS * 2 ** min(max(attempts, 1) - 1, 30), settings.repair_backoff_cap_seconds)


@dataclass(frozen=True)
class NodeGap:
    instance_id: str
    images: tuple[ResolvedImage, ...]
    # When the oldest image it lacks was pushed: the gap's age, for oldest-first.
    since: datetime

    @property
    def digests(self) -> str:
        return ",".join(sorted(image.digest for image in self.images))


@dataclass(frozen=True)
class Skipped:
    instance_id: str
    why: str  # grace | in_flight | backed_off | deferred
    until: str = ""


@dataclass(frozen=True)
class RepairPlan:
    commands: tuple[tuple[tuple[ResolvedImage, ...], tuple[str, ...]], ...]
    gaps: Mapping[str, NodeGap]
    skipped: tuple[Skipped, ...]
    repair_states: Mapping[str, RepairState]

    def skipped_for(self, why: str) -> list[Skipped]:
        return [skip for skip in self.skipped if skip.why == why]


def _last_report(instance_id: str, repositories: Iterable[str], states: Mapping[tuple[str, str], NodeState]) -> str:
    stamps = [
        stamp
        for repository in repositories
        if (state := states.get((instance_id, repository))) is not None
        for stamp in (state.cached_at, state.last_error_at)
    ]
    return max(stamps, default="")


def find_gaps(coverages: Iterable[RepositoryCoverage], settings: StatusSettings, now: datetime) -> dict[str, NodeGap]:
    """Per online node, the newest images it lacks, past the grace period after their push. A node holding a newer
    image than the newest (tagged or not) is not missing it (``coverage_of``): it is never sent an older image."""
    grace = timedelta(seconds=settings.repair_grace_seconds)
    lacking: dict[str, list[ResolvedImage]] = defaultdict(list)
    for coverage in coverages:
        newest = coverage.newest
        if newest is None or now - newest.pushed_at < grace:
            continue
        for state in coverage.missing:
            lacking[state.instance_id].append(newest)
    return {
        node: NodeGap(node, tuple(images), since=min(image.pushed_at for image in images))
        for node, images in sorted(lacking.items())
    }


def plan_repairs(
    gaps: Mapping[str, NodeGap],
    *,
    started_at: Mapping[str, datetime],
    states: Mapping[tuple[str, str], NodeState],
    repair_states: Mapping[str, RepairState],
    in_flight: Iterable[str],
    settings: StatusSettings,
    now: datetime,
) -> RepairPlan:
    """Pure: which nodes get which images now, grouped into commands; and why each of the others waits."""
    grace = timedelta(seconds=settings.repair_grace_seconds)
    flight_window = timedelta(seconds=settings.delivery_timeout_seconds + settings.execution_timeout_seconds)
    busy = set(in_flight)
    skipped: list[Skipped] = []
    eligible: list[NodeGap] = []
    for node, gap in gaps.items():
        started = started_at.get(node)
        if started is not None and now - started < grace:
            skipped.append(Skipped(node, "grace", timestamp(started + grace)))
            continue
        recorded = repair_states.get(node, RepairState())
        # Any repair the node has not reported on since, whatever gap it was for, is still running.
        sent = parse_time(recorded.sent_at)
        repositories = {image.repository for image in gap.images}
        unreported = sent is not None and _last_report(node, repositories, states) < recorded.sent_at
        if node in busy or (unreported and now - sent < flight_window):
            skipped.append(Skipped(node, "in_flight", recorded.sent_at))
            continue
        next_at = parse_time(recorded.for_gap(gap.digests).next_at)
        if next_at is not None and now < next_at:
            skipped.append(Skipped(node, "backed_off", timestamp(next_at)))
            continue
        eligible.append(gap)

    eligible.sort(key=lambda gap: (gap.since, gap.instance_id))
    chosen = eligible[: settings.repair_max_nodes_per_sweep]
    skipped.extend(Skipped(gap.instance_id, "deferred") for gap in eligible[settings.repair_max_nodes_per_sweep :])

    groups: dict[tuple[ResolvedImage, ...], list[str]] = defaultdict(list)
    for gap in chosen:
        groups[tuple(sorted(gap.images, key=lambda image: image.repository))].append(gap.instance_id)
    commands = tuple(
        (tuple(batch), tuple(nodes[start : start + MAX_INSTANCES_PER_COMMAND]))
        for images, nodes in sorted(groups.items(), key=lambda group: [image.reference for image in group[0]])
        for start in range(0, len(nodes), MAX_INSTANCES_PER_COMMAND)
        for batch in image_batches(images)
    )
    return RepairPlan(commands=commands, gaps=dict(gaps), skipped=tuple(skipped), repair_states=dict(repair_states))


def node_starts(nodes: Iterable[str], online: Mapping[str, Mapping[str, Any]]) -> dict[str, datetime]:
    """When each node started, for the grace period during which the node-launch path is at work: its SSM
    registration date where DescribeInstanceInformation gives one, else its EC2 launch time (one DescribeInstances
    per 200 nodes, only for the nodes that lack an image)."""
    starts = {
        node: registered
        for node in nodes
        if (registered := parse_time((online.get(node) or {}).get("RegistrationDate"))) is not None
    }
    rest = sorted(set(nodes) - set(starts))
    if rest:
        for node, instance in aws.ec2.describe_instances(rest).items():
            launched = parse_time(instance.get("LaunchTime"))
            if launched is not None:
                starts[node] = launched
    return starts


def _window(now: datetime) -> str:
    start = int(now.timestamp()) // REPAIR_WINDOW_SECONDS * REPAIR_WINDOW_SECONDS
    return timestamp(datetime.fromtimestamp(start, UTC))


def _short_hash(values: Sequence[str]) -> str:
    return hashlib.sha256(",".join(values).encode()).hexdigest()[:16]


def _record_attempt(
    settings: StatusSettings, gap: NodeGap, previous: RepairState, now: datetime, command_id: str | None
) -> None:
    """Count a repair attempt on the node's row and set when the next may come. ``command_id`` None: SSM refused
    the node, so nothing is in flight and only the backoff is recorded."""
    attempts = previous.for_gap(gap.digests).attempts + 1
    table.record_repair_attempt(
        settings,
        gap.instance_id,
        digests=gap.digests,
        attempts=attempts,
        next_at=now + timedelta(seconds=backoff_seconds(attempts, settings)),
        now=now,
        command_id=command_id,
    )


@dataclass(frozen=True)
class RepairResult:
    enabled: bool
    commands_sent: int = 0
    nodes_repaired: int = 0
    nodes_backed_off: int = 0
    nodes_waiting: int = 0
    errors: int = 0

    def as_dict(self) -> dict[str, Any]:
        if not self.enabled:
            return {"enabled": False}
        return {
            "commands_sent": self.commands_sent,
            "nodes_repaired": self.nodes_repaired,
            "nodes_backed_off": self.nodes_backed_off,
            "nodes_waiting": self.nodes_waiting,
            "errors": self.errors,
        }


@dataclass(frozen=True)
class RepairInputs:
    """What repair plans from: the fleet as the sweep saw it (its coverage already tells a node that lacks the newest
    image from one that holds a newer one), the nodes with a command in flight, and the resolution the fleet was
    measured against."""

    fleet: FleetView
    in_flight: frozenset[str]
    newest: NewestImages


def plan_for(inputs: RepairInputs, settings: StatusSettings, now: datetime) -> RepairPlan:
    """The repair plan for a view of the fleet (the sweep's, or `make status`'s), with the nodes' repair rows."""
    fleet = inputs.fleet
    gaps = find_gaps(fleet.coverages, settings, now)
    return plan_repairs(
        gaps,
        started_at=node_starts(gaps, fleet.online) if gaps else {},
        states=fleet.states,
        repair_states=table.read_repair_states(settings, gaps) if gaps else {},
        in_flight=inputs.in_flight,
        settings=settings,
        now=now,
    )


def next_repair(plan: RepairPlan, instance_id: str, settings: StatusSettings) -> str:
    """When the node's next repair is due, for a person (the operator's view)."""
    if not settings.repair_enabled:
        return "self-repair is disabled"
    if any(instance_id in nodes for _images, nodes in plan.commands):
        attempts = plan.repair_states.get(instance_id, RepairState()).attempts
        return f"repair due now (attempt {attempts + 1})"
    skip = next((skip for skip in plan.skipped if skip.instance_id == instance_id), None)
    if skip is None:
        return "no repair: within the grace period after the push"
    attempts = plan.repair_states.get(instance_id, RepairState()).attempts
    return {
        "grace": f"no repair before {skip.until}: the node started recently, the node-launch path is at work",
        "in_flight": f"repair in flight since {skip.until}",
        "backed_off": f"next repair at {skip.until} (backed off after {attempts} attempt(s))",
        "deferred": "repair due, beyond this sweep's bound: the next sweeps",
    }[skip.why]


def repair(
    inputs: RepairInputs,
    settings: StatusSettings,
    *,
    now: datetime,
    time_left: Callable[[], float] | None = None,
    lambda_context: LambdaContext | None = None,
) -> RepairResult:
    """Send what the plan says; record each sent node's backoff; emit the repair metrics."""
    if not settings.repair_enabled:
        return RepairResult(enabled=False)
    plan = plan_for(inputs, settings, now)
    sent = repaired = errors = refused = 0
    window = _window(now)
    work = list(plan.commands)
    # The sweep's commands run together: each may use the registry path's budget in proportion to its nodes, so that
    # all of them pull no more at once than one command to every node would.
    planned_nodes = sum(len(nodes) for _images, nodes in work)
    while work:
        images, nodes = work.pop(0)
        if running_out(time_left, SEND_RESERVE_SECONDS):
            logger.warning("repair out of time: the next sweep sends the rest", extra={"nodes_left": len(nodes)})
            break
        if refused >= MAX_REFUSED_SENDS_PER_SWEEP:
            logger.warning("SSM refused too many repairs: the next sweep sends the rest", extra={"refused": refused})
            break
        references = [image.reference for image in images]
        key = {"repair_window": window, "images": _short_hash(references), "nodes": _short_hash(nodes)}
        try:
            command_id, sent_now = send_once(
                send_command_request(
                    images, settings, instance_ids=list(nodes), budget_share=len(nodes) / planned_nodes
                ),
                key=key,
                settings=settings,
                lambda_context=lambda_context,
                log_fields={"repair": True, "instance_ids": list(nodes), "images": references},
            )
        except aws.CommandRefusedError as refusal:
            refused += 1
            if len(nodes) > 1:
                # SSM refuses the whole command for one node it does not accept, whatever its code (InvalidInstanceId
                # for a node deregistered since the listing, AccessDeniedException for a hybrid mi- node outside the
                # policy's resources...): the halves go separately, so that one node cannot hold back the group.
                # Throttling and 5xx are not refusals: they fail the group, unsplit, until the next sweep.
                half = len(nodes) // 2
                work[0:0] = [(images, nodes[:half]), (images, nodes[half:])]
                continue
            # Recorded as an attempt, so that a node SSM refuses backs off like one that fails.
            logger.warning("SSM refuses a repair for the node", extra={"instance_id": nodes[0], "code": refusal.code})
            _record_attempt(settings, plan.gaps[nodes[0]], plan.repair_states.get(nodes[0], RepairState()), now, None)
            errors += 1
            continue
        except Exception:
            # Not sent (or not known to be): these nodes stay missing, and the next sweep plans them again.
            logger.exception("repair command failed", extra={"instance_ids": list(nodes), "images": references})
            errors += 1
            continue
        for node in nodes:
            previous = plan.repair_states.get(node, RepairState())
            if not sent_now and previous.command_id == command_id:
                continue  # a repeated sweep: already recorded
            _record_attempt(settings, plan.gaps[node], previous, now, command_id)
        if sent_now:
            sent += 1
            repaired += len(nodes)
    backed_off = len(plan.skipped_for("backed_off"))
    waiting = len(plan.skipped) - backed_off
    if plan.gaps:
        logger.info(
            "repair",
            extra={
                "commands_sent": sent,
                "nodes_repaired": repaired,
                "nodes_backed_off": backed_off,
                "nodes_waiting": waiting,
            },
        )
    m.emit(
        {"ClusterName": settings.cluster_name},
        [
            (m.REPAIR_COMMANDS_SENT, MetricUnit.Count, sent),
            (m.NODES_REPAIRED, MetricUnit.Count, repaired),
            (m.NODES_BACKED_OFF, MetricUnit.Count, backed_off),
        ],
    )
    return RepairResult(True, sent, repaired, backed_off, waiting, errors)
