"""What one invocation's report does to the node's rows: the images it holds (and, when this report brought the
newest, the push-to-cached seconds), the failures and skips it reports or leaves unreported, a node that cannot be
served, and a new node's first report. ``RecordingScope`` is what the recordings of one sweep, or of a warm
container's status events, share."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aws_lambda_powertools import Logger

from eks_prefetch import aws
from eks_prefetch.images import DIGEST_PATTERN
from eks_prefetch.node_contract import PLATFORM_SKIP_REASON
from eks_prefetch.node_output import NodeOutput, OutputProblem, Summary, repository_of
from eks_prefetch.prefetch.commands import is_new_node_comment, launch_time_of
from eks_prefetch.prefetch.resolution import NewestImages
from eks_prefetch.settings import StatusSettings
from eks_prefetch.status import table
from eks_prefetch.status.table import parse_time

logger = Logger(child=True)

# Final statuses where the script never ran on the node: no output is expected.
NOT_RUN = frozenset({"DeliveryTimedOut", "Undeliverable", "Terminated", "InvalidPlatform", "AccessDenied"})
_DIGEST_IN_REF = re.compile(f"@({DIGEST_PATTERN})$")
# A push brings one status event per node within minutes: in a warm container, one resolution (a DescribeImages
# listing) serves a burst of them instead of one per node. Short, so that a newer push is seen soon.
EVENT_RESOLUTION_SECONDS = 30.0
# A report of a digest that is not the cached newest may follow a push the cache predates: the listing is redone,
# at most this often, so that PushToCachedSeconds is measured against the push that really is the newest.
REFRESH_FLOOR_SECONDS = 5.0
# Commands whose requested images a scope remembers (a command never changes).
_COMMANDS_REMEMBERED = 256
# Nodes whose SSM platform a scope remembers (a node's platform does not change).
_AGENTS_REMEMBERED = 4096


@dataclass
class RecordingScope:
    """What the recordings of one sweep, or of a warm container's status events, share; its owner decides how long
    it lives: the newest images, and each command's requested images."""

    settings: StatusSettings
    newest: NewestImages
    _requested: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False)
    _agents: dict[str, Mapping[str, Any]] = field(default_factory=dict, repr=False)

    @classmethod
    def for_events(cls, settings: StatusSettings) -> RecordingScope:
        newest = NewestImages(
            settings, lifetime_seconds=EVENT_RESOLUTION_SECONDS, refresh_floor_seconds=REFRESH_FLOOR_SECONDS
        )
        return cls(settings, newest)

    @classmethod
    def for_sweep(cls, settings: StatusSettings) -> RecordingScope:
        return cls(settings, NewestImages(settings, refresh_floor_seconds=REFRESH_FLOOR_SECONDS))

    def requested_images(self, command_id: str) -> tuple[str, ...]:
        """The image references a command asked for (one ListCommands per command)."""
        if command_id not in self._requested:
            if len(self._requested) >= _COMMANDS_REMEMBERED:
                self._requested.clear()
            command = aws.ssm.get_command(command_id)
            values = ((command or {}).get("Parameters") or {}).get("images") or []
            self._requested[command_id] = tuple(ref for value in values for ref in value.split(",") if ref)
        return self._requested[command_id]

    def online_agent(self, instance_id: str) -> Mapping[str, Any] | None:
        """The node's managed-node information (its platform), one DescribeInstanceInformation per node in this
        scope's life; a node not online is asked again next time."""
        if instance_id not in self._agents:
            info = aws.ssm.online_agent(instance_id)
            if info is None:
                return None
            if len(self._agents) >= _AGENTS_REMEMBERED:
                self._agents.clear()
            self._agents[instance_id] = info
        return self._agents[instance_id]


def _invocation_failure_reason(status: str, output: NodeOutput | None) -> str:
    if output is None:
        if status in NOT_RUN:
            return f"SSM {status}: the script did not run"
        return f"SSM {status}: no output (the script did not start, or printed nothing)"
    if output.run_error:
        return f"run failed: {output.run_error}"
    if output.problem is OutputProblem.EMPTY:
        return f"SSM {status}: no output"
    if output.problem is OutputProblem.NO_SUMMARY:
        return f"SSM {status}: no summary line (output truncated, or the run was killed)"
    if output.problem is not None:
        return f"SSM {status}: output is not the script's JSON ({output.problem.value})"
    return f"SSM {status}"


def _held(
    scope: RecordingScope,
    instance_id: str,
    repository: str,
    digest: str,
    image_status: str,
    command_id: str,
    at: datetime,
) -> float | None:
    """Record that the node holds the digest; push-to-cached seconds if this report is the one that brought it, and
    the digest is the newest."""
    brought = table.record_held(
        scope.settings,
        instance_id,
        repository,
        digest=digest,
        status=image_status,
        command_id=command_id,
        at=at,
        pushed_at=scope.newest.push_time(repository, digest),
    )
    if not brought:
        return None
    image = scope.newest.get(repository)
    if image is None or image.digest != digest:
        image = scope.newest.get_fresh(repository)
    if image is None or image.digest != digest:
        return None
    return max(0.0, (at - image.pushed_at).total_seconds())


def _record_unsupported(scope: RecordingScope, command_id: str, instance_id: str, reason: str, at: datetime) -> None:
    """The node reported it cannot be served: marked on its rows of the watched repositories the command sent it
    (those whose coverage it would count in), for coverage to leave it out of every figure and self-repair."""
    watched = set(scope.settings.repository_names)
    repositories = {repository_of(reference) for reference in scope.requested_images(command_id)} & watched
    for repository in sorted(repositories):
        table.record_unsupported(scope.settings, instance_id, repository, reason=reason, command_id=command_id, at=at)


def update_node_state(
    scope: RecordingScope,
    command_id: str,
    instance_id: str,
    status: str,
    output: NodeOutput | None,
    at: datetime,
) -> list[tuple[str, float]]:
    """Write the node's rows from one invocation; return (repository, push-to-cached seconds) of newly held newest
    digests."""
    push_to_cached: list[tuple[str, float]] = []
    if output is not None and output.unsupported:
        # Not a failure of its images: the node is outside coverage until a later report of its images.
        _record_unsupported(scope, command_id, instance_id, output.unsupported, at)
        return push_to_cached
    reported: set[str] = set()
    for record in output.records if output else ():
        repository = record.repository
        if not repository:
            continue
        reported.add(record.image)
        if record.status in {"pulled", "cached"} and record.digest:
            seconds = _held(scope, instance_id, repository, record.digest, record.status, command_id, at)
            if seconds is not None:
                push_to_cached.append((repository, seconds))
        elif record.status in {"failed", "skipped"}:
            match = _DIGEST_IN_REF.search(record.image)
            table.record_failure(
                scope.settings,
                instance_id,
                repository,
                reason=record.detail or record.status,
                kind=record.status,
                digest=record.digest or (match.group(1) if match else ""),
                command_id=command_id,
                at=at,
                not_applicable=record.status == "skipped" and record.detail.startswith(PLATFORM_SKIP_REASON),
            )

    omitted_held = output is not None and output.omitted_all_held
    failed = status != "Success" or output is None or output.problem is not None or bool(output.run_error)
    # The command's images (one ListCommands) only when some were not reported on: not for a clean run.
    requested = scope.requested_images(command_id) if omitted_held or failed else ()
    unreported = [reference for reference in requested if reference not in reported]
    summary = output.summary if output is not None else None
    omitted_known = bool(unreported and omitted_held and summary and _omitted_are_these(summary, requested, reported))
    if unreported and omitted_held and summary and not omitted_known:
        # Coverage is never overstated: none counts until the node reports it (self-repair resends it).
        logger.warning(
            f"omitted images not counted as held: the node's summary accounts for {summary.omitted} omitted "
            f"image(s) of {summary.images}, but {len(unreported)} of the {len(requested)} requested went unreported, "
            "so which ones is ambiguous; they count as missing until the node reports them",
            extra={
                "command_id": command_id,
                "instance_id": instance_id,
                "omitted": summary.omitted,
                "summary_images": summary.images,
                "unreported": len(unreported),
                "requested": len(requested),
            },
        )
    if omitted_known:
        # Left out of the output to fit SSM's limit, and the summary says none failed: held, by the digest requested.
        for reference in unreported:
            match = _DIGEST_IN_REF.search(reference)
            if match and repository_of(reference):
                repository = repository_of(reference)
                seconds = _held(scope, instance_id, repository, match.group(1), "held", command_id, at)
                if seconds is not None:
                    push_to_cached.append((repository, seconds))
    elif unreported and failed:
        # Images the node said nothing about (not delivered, killed, truncated): the invocation's reason is theirs.
        _record_unreported_failures(scope.settings, instance_id, unreported, status, output, command_id, at)
    return push_to_cached


def _omitted_are_these(summary: Summary, requested: Sequence[str], reported: AbstractSet[str]) -> bool:
    """Whether the images the summary says it left out are exactly the requested ones the node did not report on: it
    counts the command's images, reported on none other, and omitted as many as are unreported."""
    unreported = set(requested) - reported
    return summary.images == len(requested) and reported <= set(requested) and summary.omitted == len(unreported)


def _record_unreported_failures(
    settings: StatusSettings,
    instance_id: str,
    references: list[str],
    status: str,
    output: NodeOutput | None,
    command_id: str,
    at: datetime,
) -> None:
    reason = _invocation_failure_reason(status, output)
    for reference in references:
        repository = repository_of(reference)
        if not repository:
            continue
        match = _DIGEST_IN_REF.search(reference)
        table.record_failure(
            settings,
            instance_id,
            repository,
            reason=reason,
            kind=status,
            digest=match.group(1) if match else "",
            command_id=command_id,
            at=at,
        )


@dataclass(frozen=True)
class NewNodeReport:
    """The first report since a launch, when it answers the new-node path's command."""

    seconds: float
    booted_warm: bool


def booted_warm(output: NodeOutput) -> bool:
    """Whether a new node's first prefetch found everything it was asked for already cached: nothing pulled, nothing
    failed (a failed image is one the node did not hold). Platform skips are not the node's to hold."""
    return not any(record.status in {"pulled", "failed"} for record in output.records)


def new_node_report(
    settings: StatusSettings,
    command_id: str,
    instance_id: str,
    output: NodeOutput | None,
    at: datetime,
    *,
    comment: str,
) -> NewNodeReport | None:
    """Seconds from the instance's launch to its first report of a pulled or cached image, once per launch, and only
    if that first report answers the new-node path's command: a node launched before anything was pushed, or served
    first by a push or a repair, would measure the wait for that instead of the new-node path. The same report says
    whether the node booted warm.

    The launch time is the one the new-node command's Comment carries (GetCommandInvocation returned it): no EC2
    call. Any other command's report is noted on the node's row (``table.record_report``), so that a new-node report
    recorded after it is not measured. A new-node command sent before its Comment carried the launch time falls
    back to DescribeInstances."""
    if output is None or not any(record.status in {"pulled", "cached"} for record in output.records):
        return None
    if not is_new_node_comment(comment):
        table.record_report(settings, instance_id, at=at)
        return None
    launched = launch_time_of(comment)
    if launched is None:
        instance = aws.ec2.describe_instance(instance_id)
        launched = parse_time(instance.get("LaunchTime")) if instance else None
    if launched is None:
        return None
    if not table.record_first_report(settings, instance_id, launched=launched, at=at, command_id=command_id):
        return None
    return NewNodeReport(seconds=max(0.0, (at - launched).total_seconds()), booted_warm=booted_warm(output))
