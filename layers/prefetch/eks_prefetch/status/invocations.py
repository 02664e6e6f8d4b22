"""Recording one (command, node) invocation: counted exactly once, with the node's state it reports.

Two ways in, one way to count: an SSM invocation status-change event (EventBridge: at least once, best effort, so
duplicated or lost), and the scheduled sweep (``sweep``), which finds the terminal invocations whose event never
came. Both call ``record_invocation``. It reads the invocation with its output, updates the node's rows (idempotent,
newest report wins), then claims the (command, node) with a conditional write: only the claimant emits metrics. A
crash before the claim leaves it uncounted, so a retry or the sweep counts it; duplicates find the claim.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger

from eks_prefetch import aws
from eks_prefetch.events import SsmInvocationStatusEvent
from eks_prefetch.images import DIGEST_PATTERN
from eks_prefetch.node_contract import PLATFORM_SKIP_REASON, unsupported_reason
from eks_prefetch.node_output import NodeOutput, OutputProblem, parse_node_output, repository_of
from eks_prefetch.prefetch.commands import is_new_node_comment
from eks_prefetch.prefetch.resolution import NewestImages
from eks_prefetch.settings import Settings
from eks_prefetch.status import metrics as m
from eks_prefetch.status import table
from eks_prefetch.status.table import parse_time, require_status_table

logger = Logger(child=True)

# Invocation statuses that are not final; the rule excludes them, and the code does not trust the rule alone.
NON_TERMINAL = frozenset({"Pending", "InProgress", "Delayed", "Cancelling"})
# StatusDetails finer than Status: "TimedOut" is one of two timeouts, "Failed" may be a delivery failure.
DETAIL_STATUSES = frozenset(
    {"DeliveryTimedOut", "ExecutionTimedOut", "Undeliverable", "Terminated", "InvalidPlatform", "AccessDenied"}
)
# Final statuses where the script never ran on the node: no output is expected.
NOT_RUN = frozenset({"DeliveryTimedOut", "Undeliverable", "Terminated", "InvalidPlatform", "AccessDenied"})
# Final statuses reached with or without the script having run.
MAY_NOT_HAVE_RUN = frozenset({"Cancelled", "TimedOut"})
# What the SSM agent says of a step it did not run: a precondition not met (platformType Linux, on a Windows node
# reached by a push's tag Targets), or a plugin the platform lacks (aws:runShellScript on Windows). The agent counts
# a skipped step as a success (amazon-ssm-agent: "Skipped is a form of success"): the invocation is Success, with
# this text as the step's output, or no stdout at all.
_SKIPPED_BY_AGENT = re.compile(r"^Step execution skipped due to ")
_DIGEST_IN_REF = re.compile(f"@({DIGEST_PATTERN})$")
_STATUS_NAME = re.compile(r"^[A-Za-z]{1,40}$")
# A push brings one status event per node within minutes: in a warm container, one resolution (a DescribeImages
# listing) serves a burst of them instead of one per node. Short, so that a newer push is seen soon.
EVENT_RESOLUTION_SECONDS = 30.0
# A report of a digest that is not the cached newest may follow a push the cache predates: the listing is redone,
# at most this often, so that PushToCachedSeconds is measured against the push that really is the newest.
REFRESH_FLOOR_SECONDS = 5.0
# Commands whose requested images a scope remembers (a command never changes).
_COMMANDS_REMEMBERED = 256


def final_status(status: str, details: str | None) -> str:
    """The status an invocation is counted under: StatusDetails where it is finer, else Status."""
    chosen = details if details in DETAIL_STATUSES else status
    return chosen if _STATUS_NAME.match(chosen or "") else "Unknown"


@dataclass(frozen=True)
class InvocationOutcome:
    command_id: str
    instance_id: str
    result: str  # counted | duplicate | in_progress | pending | missing | foreign
    status: str = ""
    via: str = ""
    output: NodeOutput | None = None
    push_to_cached: tuple[tuple[str, float], ...] = ()
    launch_to_cached: float | None = None
    # Why the node cannot be served, when this invocation showed it: the script found no containerd socket, or SSM
    # skipped the step on a node that is not Linux. Neither is a failure.
    unsupported: str = ""
    # The new node's first report (measured as launch_to_cached): True when it found every image already cached (a
    # warm boot: nothing to pull), False when it pulled or failed something; None for any other report.
    booted_warm: bool | None = None

    @property
    def counted(self) -> bool:
        return self.result == "counted"

    @property
    def problem(self) -> OutputProblem | None:
        return self.output.problem if self.output else None

    @property
    def failed(self) -> bool:
        """Not a clean success: an SSM failure of any kind, bad output, or a run-level error on the node."""
        if self.unsupported and self.status == "Success":
            return False
        run_error = self.output.run_error if self.output else None
        return self.status != "Success" or self.problem is not None or bool(run_error)

    def as_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "result": self.result,
            "command_id": self.command_id,
            "instance_id": self.instance_id,
        }
        if self.status:
            result["status"] = self.status
        if self.problem:
            result["problem"] = self.problem.value
        if self.unsupported:
            result["unsupported"] = self.unsupported
        return result


@dataclass
class RecordingScope:
    """What the recordings of one sweep, or of a warm container's status events, share; its owner decides how long
    it lives: the newest images, and each command's requested images."""

    settings: Settings
    newest: NewestImages
    _requested: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False)

    @classmethod
    def for_events(cls, settings: Settings) -> RecordingScope:
        newest = NewestImages(
            settings, lifetime_seconds=EVENT_RESOLUTION_SECONDS, refresh_floor_seconds=REFRESH_FLOOR_SECONDS
        )
        return cls(settings, newest)

    @classmethod
    def for_sweep(cls, settings: Settings) -> RecordingScope:
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


def _skipped_by_ssm(status: str, stdout: str, instance_id: str) -> str | None:
    """Why SSM ran nothing on the node, when the invocation is a step the agent skipped; None otherwise.

    The agent reports a skipped step as Success, with its skip message or no stdout at all; the script itself always
    prints a summary. No stdout is told apart from a broken run (EmptyOutput) by the node's platform, one
    DescribeInstanceInformation: only for such an invocation, never for a run that printed something."""
    if status != "Success":
        return None
    text = stdout.strip()
    if text:
        return f"SSM skipped the document's step: {text[:200]}" if _SKIPPED_BY_AGENT.match(text) else None
    info = aws.ssm.online_agent(instance_id)
    why = unsupported_reason(info) if info else None
    return f"{why} (SSM skipped the document's step)" if why else None


def _record_unsupported(scope: RecordingScope, command_id: str, instance_id: str, reason: str, at: datetime) -> None:
    """The node reported it cannot be served: marked on its rows of the watched repositories the command sent it
    (those whose coverage it would count in), for coverage to leave it out of every figure and self-repair."""
    watched = set(scope.settings.repository_names)
    repositories = {repository_of(reference) for reference in scope.requested_images(command_id)} & watched
    for repository in sorted(repositories):
        table.record_unsupported(scope.settings, instance_id, repository, reason=reason, command_id=command_id, at=at)


def _update_node_state(
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
    if unreported and omitted_held:
        # Left out of the output to fit SSM's limit, and the summary says none failed: held, by the digest requested.
        for reference in unreported:
            match = _DIGEST_IN_REF.search(reference)
            if match and repository_of(reference):
                repository = repository_of(reference)
                seconds = _held(scope, instance_id, repository, match.group(1), "held", command_id, at)
                if seconds is not None:
                    push_to_cached.append((repository, seconds))
    elif unreported:
        # Images the node said nothing about (not delivered, killed, truncated): the invocation's reason is theirs.
        _record_unreported_failures(scope.settings, instance_id, unreported, status, output, command_id, at)
    return push_to_cached


def _record_unreported_failures(
    settings: Settings,
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


def _new_node_report(
    settings: Settings, command_id: str, instance_id: str, output: NodeOutput | None, at: datetime, *, comment: str
) -> NewNodeReport | None:
    """Seconds from the instance's launch to its first report of a pulled or cached image, once per launch, and only
    if that first report answers the new-node path's command: a node launched before anything was pushed, or served
    first by a push or a repair, would measure the wait for that instead of the new-node path. The same report says
    whether the node booted warm."""
    if output is None or not any(record.status in {"pulled", "cached"} for record in output.records):
        return None
    instance = aws.ec2.describe_instance(instance_id)
    launched = parse_time(instance.get("LaunchTime")) if instance else None
    if launched is None:
        return None
    # Every command's report is noted, so that a push served first leaves a later new-node report unmeasured.
    if not table.record_first_report(settings, instance_id, launched=launched, at=at, command_id=command_id):
        return None
    if not is_new_node_comment(comment):
        return None
    return NewNodeReport(seconds=max(0.0, (at - launched).total_seconds()), booted_warm=booted_warm(output))


def record_invocation(
    command_id: str,
    instance_id: str,
    settings: Settings,
    *,
    via: str,
    scope: RecordingScope | None = None,
    now: datetime | None = None,
) -> InvocationOutcome:
    """Count one (command, node) invocation exactly once: node state, then the claim, then metrics.

    Every step before the claim is idempotent (a retry, a duplicate delivery or the sweep gets the same answers), and
    the metrics are built before it: a recording that fails or dies anywhere before its claim is finished by the
    next one. The claim carries this recording's token, so that a lost reply to its write is told apart from a claim
    by someone else; it is final once the metrics are out, and a claim left unfinished past any function's timeout
    is taken over. Never raises for what SSM or the node reported (any status, any output); AWS errors propagate.
    """
    now = now or datetime.now(UTC)
    scope = scope or RecordingScope.for_sweep(settings)
    fields = {"command_id": command_id, "instance_id": instance_id, "via": via}
    earlier = table.read_claim(settings, command_id, instance_id)
    standing = earlier.standing(now) if earlier else None
    if standing is table.Standing.COUNTED:
        logger.info("invocation already counted", extra=fields)
        return InvocationOutcome(command_id, instance_id, "duplicate", via=via)
    if standing is table.Standing.IN_PROGRESS:
        # Another recording claimed it moments ago; if it died, the sweep takes the claim over once it is stale.
        logger.info("invocation being counted by another delivery", extra=fields)
        return InvocationOutcome(command_id, instance_id, "in_progress", via=via)

    invocation = aws.ssm.get_command_invocation(command_id, instance_id)
    if invocation is None:
        logger.warning("invocation not found in SSM, not counted", extra=fields)
        return InvocationOutcome(command_id, instance_id, "missing", via=via)
    if invocation.get("DocumentName", settings.document_name) != settings.document_name:
        # The rule filters on our document; this is a second guard, so that no other document is ever counted.
        logger.warning(
            "invocation of another document dropped", extra={**fields, "document": invocation["DocumentName"]}
        )
        return InvocationOutcome(command_id, instance_id, "foreign", via=via)
    if invocation.get("Status") in NON_TERMINAL:
        # The final status comes later, by its own event or the sweep.
        logger.info("invocation not finished yet", extra={**fields, "ssm_status": invocation.get("Status")})
        return InvocationOutcome(command_id, instance_id, "pending", status=invocation["Status"], via=via)

    status = final_status(invocation.get("Status", ""), invocation.get("StatusDetails"))
    at = parse_time(invocation.get("ExecutionEndDateTime")) or now
    stdout = invocation.get("StandardOutputContent") or ""
    # Cancelled or timed out before it started, a run prints nothing: that is its status, not bad output.
    not_run = status in NOT_RUN or (status in MAY_NOT_HAVE_RUN and not stdout.strip())
    # A node that is not Linux, reached by a push's tag Targets: SSM skipped the step. Nothing to record on its rows
    # (coverage knows it from its platform), and no failure.
    skipped = None if not_run else _skipped_by_ssm(status, stdout, instance_id)
    output = None if not_run or skipped else parse_node_output(stdout, watched=settings.repository_names)
    unsupported = skipped or (output.unsupported if output else None) or ""
    push_to_cached = [] if skipped else _update_node_state(scope, command_id, instance_id, status, output, at)
    new_node = _new_node_report(settings, command_id, instance_id, output, at, comment=invocation.get("Comment") or "")
    outcome = InvocationOutcome(
        command_id,
        instance_id,
        "counted",
        status=status,
        via=via,
        output=output,
        push_to_cached=tuple(push_to_cached),
        launch_to_cached=new_node.seconds if new_node else None,
        booted_warm=new_node.booted_warm if new_node else None,
        unsupported=unsupported,
    )
    metrics = m.invocation_metrics(outcome, settings)

    token = uuid.uuid4().hex
    replacing = earlier if standing is table.Standing.STALE else None
    if replacing is not None:
        logger.warning("taking over a claim left unfinished", extra={**fields, "claimed_at": replacing.claimed_at})
    if not table.claim(
        settings, command_id, instance_id, token=token, status=status, via=via, now=now, replacing=replacing
    ):
        logger.info("invocation counted concurrently by another delivery", extra=fields)
        return InvocationOutcome(command_id, instance_id, "duplicate", status=status, via=via)
    _log_outcome(outcome, invocation)
    m.emit_all(metrics)
    table.mark_counted(settings, command_id, instance_id, token)
    return outcome


def _log_outcome(outcome: InvocationOutcome, invocation: Mapping[str, Any]) -> None:
    output = outcome.output
    fields: dict[str, Any] = {
        "command_id": outcome.command_id,
        "instance_id": outcome.instance_id,
        "via": outcome.via,
        "status": outcome.status,
        "ssm_status": invocation.get("Status"),
        "ssm_status_details": invocation.get("StatusDetails"),
    }
    if output is not None:
        fields["problem"] = output.problem.value if output.problem else None
        fields["images"] = {status: len(output.by_status(status)) for status in m.IMAGES_BY_STATUS}
        failed = [{"image": r.image, "status": r.status, "detail": r.detail} for r in output.records if r.detail]
        if failed:
            fields["details"] = failed[:20]
        if output.run_error:
            fields["run_error"] = output.run_error
    if outcome.unsupported:
        fields["unsupported"] = outcome.unsupported
    if outcome.failed:
        logger.warning("invocation failed", extra=fields)
    elif outcome.unsupported:
        logger.info("invocation on a node that cannot be served: outside coverage and self-repair", extra=fields)
    else:
        logger.info("invocation succeeded", extra=fields)


def record_status_event(event: SsmInvocationStatusEvent, scope: RecordingScope) -> InvocationOutcome:
    settings = scope.settings
    require_status_table(settings)
    detail = event.detail
    if detail.document_name != settings.document_name:
        logger.warning("status event of another document dropped", extra={"document": detail.document_name})
        return InvocationOutcome(detail.command_id, detail.instance_id, "foreign", via="event")
    return record_invocation(detail.command_id, detail.instance_id, settings, via="event", scope=scope)
