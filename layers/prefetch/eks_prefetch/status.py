"""What happened to every prefetch: each (command, node) invocation counted exactly once, node state, coverage.

Two ways in, one way to count:
- an SSM invocation status-change event (EventBridge: at least once, best effort, so duplicated or lost);
- a scheduled sweep, which lists our document's recent commands from a persisted watermark and counts the terminal
  invocations whose event never came.
Both call ``record_invocation``. It reads the invocation with its output, updates the node's rows (idempotent,
newest report wins), then claims the (command, node) with a DynamoDB conditional write: only the claimant emits
metrics. A crash before the claim leaves it uncounted, so a retry or the sweep counts it; duplicates find the claim.

The status table (one table, ``pk``/``sk``, TTL on ``expires_at``):
- ``NODE#<instance>`` / ``REPO#<repository>``: the digest last pulled or cached there and when; the last failure
  with its reason and time. Extensible: later fields (repair backoff) are new attributes of this row.
- ``NODE#<instance>`` / ``NODE``: the launch time whose first report was measured (LaunchToCachedSeconds once).
- ``INVOCATION#<command>`` / ``<instance>``: the claim, with the final status.
- ``SWEEP`` / ``WATERMARK``: where the next sweep starts.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit
from botocore.exceptions import ClientError

from eks_prefetch import aws
from eks_prefetch import status_metrics as m
from eks_prefetch.events import SsmInvocationStatusEvent
from eks_prefetch.images import DIGEST_PATTERN, ResolvedImage
from eks_prefetch.node_output import NodeOutput, OutputProblem, parse_node_output, repository_of
from eks_prefetch.resolution import resolve_newest
from eks_prefetch.settings import Settings

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
# ListCommands may show a command sent a moment ago only later: the watermark stays this far behind.
WATERMARK_SAFETY = timedelta(minutes=5)
# A fresh deployment's first sweep looks back this far (not the whole history).
FIRST_SWEEP_LOOKBACK = timedelta(hours=1)
# The sweep stops taking new commands when the Lambda has less than this left; the watermark keeps the rest.
SWEEP_RESERVE_SECONDS = 30.0
_DIGEST_IN_REF = re.compile(f"@({DIGEST_PATTERN})$")
_STATUS_NAME = re.compile(r"^[A-Za-z]{1,40}$")

WATERMARK_KEY = {"pk": "SWEEP", "sk": "WATERMARK"}


def node_key(instance_id: str, repository: str) -> dict[str, str]:
    return {"pk": f"NODE#{instance_id}", "sk": f"REPO#{repository}"}


def claim_key(command_id: str, instance_id: str) -> dict[str, str]:
    return {"pk": f"INVOCATION#{command_id}", "sk": instance_id}


def timestamp(moment: datetime) -> str:
    """One fixed ISO format, so that stored times compare as strings."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def final_status(status: str, details: str | None) -> str:
    """The status an invocation is counted under: StatusDetails where it is finer, else Status."""
    chosen = details if details in DETAIL_STATUSES else status
    return chosen if _STATUS_NAME.match(chosen or "") else "Unknown"


@dataclass(frozen=True)
class InvocationOutcome:
    command_id: str
    instance_id: str
    result: str  # counted | duplicate | pending | missing | foreign
    status: str = ""
    via: str = ""
    output: NodeOutput | None = None
    push_to_cached: tuple[tuple[str, float], ...] = ()
    launch_to_cached: float | None = None

    @property
    def counted(self) -> bool:
        return self.result == "counted"

    @property
    def problem(self) -> OutputProblem | None:
        return self.output.problem if self.output else None

    @property
    def failed(self) -> bool:
        """Not a clean success: an SSM failure of any kind, bad output, or a run-level error on the node."""
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
        return result


# A push brings one status event per node within minutes: one resolution (a DescribeImages listing) serves a burst
# of them in a warm container, instead of one per node. Short, so that a newer push is seen soon.
RESOLUTION_TTL_SECONDS = 30.0
# A report of a digest that is not the cached newest may follow a push the cache predates: the listing is redone,
# at most this often, so that PushToCachedSeconds is measured against the push that really is the newest.
REFRESH_FLOOR_SECONDS = 5.0
_recent: dict[tuple[str, str], tuple[float, ResolvedImage | None, dict[str, datetime]]] = {}


def forget_resolutions() -> None:
    _recent.clear()


@dataclass
class NewestImages:
    """The newest image per repository, from the one resolution, reused for RESOLUTION_TTL_SECONDS; and, from the
    same listing, when each tagged image of the repository was pushed."""

    settings: Settings
    clock: Callable[[], float] = time.monotonic

    def get(self, repository: str) -> ResolvedImage | None:
        return self._listing(repository)[0]

    def get_fresh(self, repository: str) -> ResolvedImage | None:
        """As ``get``, but from a listing at most REFRESH_FLOOR_SECONDS old."""
        cached = _recent.get((repository, self.settings.tag_filter))
        if cached is not None and self.clock() - cached[0] >= REFRESH_FLOOR_SECONDS:
            del _recent[(repository, self.settings.tag_filter)]
        return self.get(repository)

    def pushed_at(self, repository: str, digest: str) -> datetime | None:
        """When a tagged image of the repository was pushed; None if the listing does not show it."""
        return self._listing(repository)[1].get(digest)

    def _listing(self, repository: str) -> tuple[ResolvedImage | None, dict[str, datetime]]:
        key = (repository, self.settings.tag_filter)
        cached = _recent.get(key)
        if cached is not None and self.clock() - cached[0] < RESOLUTION_TTL_SECONDS:
            return cached[1], cached[2]
        seen: dict[str, datetime] = {}
        newest = self._resolve(repository, seen)
        _recent[key] = (self.clock(), newest, seen)
        return newest, seen

    def _resolve(self, repository: str, seen: dict[str, datetime]) -> ResolvedImage | None:
        if repository not in self.settings.repository_names:
            return None
        try:
            return resolve_newest(repository, self.settings, seen=seen)
        except ClientError as error:
            if error.response["Error"]["Code"] != "RepositoryNotFoundException":
                raise
            logger.warning("watched repository does not exist", extra={"repository": repository})
            return None


# --- recording one invocation -------------------------------------------------------------------------------------


def _record_held(
    settings: Settings, instance_id: str, repository: str, digest: str, status: str, command_id: str, at: datetime
) -> bool:
    """The node holds this digest as of ``at``; True if that is new (another digest, or no row, before)."""
    expires = int(at.timestamp()) + settings.node_state_ttl_seconds
    old = aws.update_item(
        settings.status_table,
        node_key(instance_id, repository),
        "SET instance_id = :i, repository = :r, digest = :d, image_status = :s, cached_at = :t, "
        "command_id = :c, expires_at = :e",
        {
            ":i": instance_id,
            ":r": repository,
            ":d": digest,
            ":s": status,
            ":t": timestamp(at),
            ":c": command_id,
            ":e": expires,
        },
        # An older report (a late event, the sweep) never overwrites a newer one.
        condition="attribute_not_exists(cached_at) OR cached_at <= :t",
    )
    return old is not None and old.get("digest") != digest


def _record_failure(
    settings: Settings,
    instance_id: str,
    repository: str,
    *,
    reason: str,
    kind: str,
    digest: str,
    command_id: str,
    at: datetime,
) -> None:
    expires = int(at.timestamp()) + settings.node_state_ttl_seconds
    aws.update_item(
        settings.status_table,
        node_key(instance_id, repository),
        "SET instance_id = :i, repository = :r, last_error = :m, last_error_kind = :k, last_error_digest = :d, "
        "last_error_command = :c, last_error_at = :t, expires_at = :e",
        {
            ":i": instance_id,
            ":r": repository,
            ":m": reason[:500],
            ":k": kind,
            ":d": digest,
            ":c": command_id,
            ":t": timestamp(at),
            ":e": expires,
        },
        condition="attribute_not_exists(last_error_at) OR last_error_at <= :t",
    )


@functools.lru_cache(maxsize=256)
def _requested_images(command_id: str) -> tuple[str, ...]:
    """The image references a command asked for (a command never changes: cached per container)."""
    command = aws.get_command(command_id)
    if not command:
        return ()
    values = (command.get("Parameters") or {}).get("images") or []
    return tuple(ref for value in values for ref in value.split(",") if ref)


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
    settings: Settings,
    newest: NewestImages,
    instance_id: str,
    repository: str,
    digest: str,
    image_status: str,
    command_id: str,
    at: datetime,
) -> float | None:
    """Record that the node holds the digest; push-to-cached seconds if that is new and the digest is the newest."""
    if not _record_held(settings, instance_id, repository, digest, image_status, command_id, at):
        return None
    image = newest.get(repository)
    if image is None or image.digest != digest:
        image = newest.get_fresh(repository)
    if image is None or image.digest != digest:
        return None
    return max(0.0, (at - image.pushed_at).total_seconds())


def _update_node_state(
    settings: Settings,
    command_id: str,
    instance_id: str,
    status: str,
    output: NodeOutput | None,
    at: datetime,
    newest: NewestImages,
) -> list[tuple[str, float]]:
    """Write the node's rows from one invocation; return (repository, push-to-cached seconds) of newly held newest
    digests."""
    push_to_cached: list[tuple[str, float]] = []
    reported: set[str] = set()
    for record in output.records if output else ():
        repository = record.repository
        if not repository:
            continue
        reported.add(record.image)
        if record.status in {"pulled", "cached"} and record.digest:
            seconds = _held(settings, newest, instance_id, repository, record.digest, record.status, command_id, at)
            if seconds is not None:
                push_to_cached.append((repository, seconds))
        elif record.status in {"failed", "skipped"}:
            match = _DIGEST_IN_REF.search(record.image)
            _record_failure(
                settings,
                instance_id,
                repository,
                reason=record.detail or record.status,
                kind=record.status,
                digest=record.digest or (match.group(1) if match else ""),
                command_id=command_id,
                at=at,
            )

    omitted_held = output is not None and output.omitted_all_held
    failed = status != "Success" or output is None or output.problem is not None or bool(output.run_error)
    # The command's images (one ListCommands) only when some were not reported on: not for a clean run.
    requested = _requested_images(command_id) if omitted_held or failed else ()
    unreported = [reference for reference in requested if reference not in reported]
    if unreported and omitted_held:
        # Left out of the output to fit SSM's limit, and the summary says none failed: held, by the digest requested.
        for reference in unreported:
            match = _DIGEST_IN_REF.search(reference)
            if match and repository_of(reference):
                repository = repository_of(reference)
                seconds = _held(settings, newest, instance_id, repository, match.group(1), "held", command_id, at)
                if seconds is not None:
                    push_to_cached.append((repository, seconds))
    elif unreported:
        # Images the node said nothing about (not delivered, killed, truncated): the invocation's reason is theirs.
        _record_unreported_failures(settings, instance_id, unreported, status, output, command_id, at)
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
        _record_failure(
            settings,
            instance_id,
            repository,
            reason=reason,
            kind=status,
            digest=match.group(1) if match else "",
            command_id=command_id,
            at=at,
        )


def _launch_to_cached(settings: Settings, instance_id: str, output: NodeOutput | None, at: datetime) -> float | None:
    """Seconds from the instance's launch to its first report of a pulled or cached image, once per launch."""
    if output is None or not any(record.status in {"pulled", "cached"} for record in output.records):
        return None
    instance = aws.describe_instance(instance_id)
    launched = parse_time(instance.get("LaunchTime")) if instance else None
    if launched is None:
        return None
    first = aws.update_item(
        settings.status_table,
        {"pk": f"NODE#{instance_id}", "sk": "NODE"},
        "SET first_report_launch = :l, first_report_at = :t, expires_at = :e",
        {":l": timestamp(launched), ":t": timestamp(at), ":e": int(at.timestamp()) + settings.node_state_ttl_seconds},
        condition="attribute_not_exists(first_report_launch) OR first_report_launch <> :l",
    )
    if first is None:
        return None
    return max(0.0, (at - launched).total_seconds())


def is_claimed(settings: Settings, command_id: str, instance_id: str) -> bool:
    return aws.get_item(settings.status_table, claim_key(command_id, instance_id)) is not None


def claimed_nodes(settings: Settings, command_id: str, invocations: Iterable[Mapping[str, Any]]) -> set[str]:
    """The nodes whose finished invocation of the command is already counted (BatchGetItem, 100 keys a request)."""
    keys = [
        claim_key(command_id, invocation["InstanceId"])
        for invocation in invocations
        if invocation.get("Status") not in NON_TERMINAL
    ]
    if not keys:
        return set()
    return {str(item["sk"]) for item in aws.batch_get_items(settings.status_table, keys)}


def record_invocation(
    command_id: str,
    instance_id: str,
    settings: Settings,
    *,
    via: str,
    newest: NewestImages | None = None,
    now: datetime | None = None,
) -> InvocationOutcome:
    """Count one (command, node) invocation exactly once: node state, then the claim, then metrics.

    Never raises for what SSM or the node reported (any status, any output); AWS errors propagate.
    """
    now = now or datetime.now(UTC)
    newest = newest or NewestImages(settings)
    fields = {"command_id": command_id, "instance_id": instance_id, "via": via}
    if is_claimed(settings, command_id, instance_id):
        logger.info("invocation already counted", extra=fields)
        return InvocationOutcome(command_id, instance_id, "duplicate", via=via)

    invocation = aws.get_command_invocation(command_id, instance_id)
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
    output = None if not_run else parse_node_output(stdout)
    push_to_cached = _update_node_state(settings, command_id, instance_id, status, output, at, newest)
    launch_to_cached = _launch_to_cached(settings, instance_id, output, at)

    claimed = aws.put_new_item(
        settings.status_table,
        {
            **claim_key(command_id, instance_id),
            "status": status,
            "via": via,
            "counted_at": timestamp(now),
            # Outlives the sweep's reach, so that the sweep never counts it again.
            "expires_at": int(now.timestamp()) + settings.sweep_max_lookback_seconds + 86_400,
        },
    )
    if not claimed:
        logger.info("invocation counted concurrently by another delivery", extra=fields)
        return InvocationOutcome(command_id, instance_id, "duplicate", status=status, via=via)

    outcome = InvocationOutcome(
        command_id,
        instance_id,
        "counted",
        status=status,
        via=via,
        output=output,
        push_to_cached=tuple(push_to_cached),
        launch_to_cached=launch_to_cached,
    )
    _log_outcome(outcome, invocation)
    emit_invocation_metrics(outcome, settings)
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
    if outcome.failed:
        logger.warning("invocation failed", extra=fields)
    else:
        logger.info("invocation succeeded", extra=fields)


def emit_invocation_metrics(outcome: InvocationOutcome, settings: Settings) -> None:
    cluster = {"ClusterName": settings.cluster_name}
    m.emit({**cluster, "Status": outcome.status}, [(m.INVOCATIONS, MetricUnit.Count, 1)])
    totals: list[m.Metric] = [
        (m.INVOCATIONS, MetricUnit.Count, 1),
        (m.INVOCATIONS_FAILED, MetricUnit.Count, 1 if outcome.failed else 0),
    ]
    if outcome.via == "sweep":
        totals.append((m.SWEEP_RECOVERED, MetricUnit.Count, 1))
    if outcome.launch_to_cached is not None:
        totals.append((m.LAUNCH_TO_CACHED, MetricUnit.Seconds, outcome.launch_to_cached))
    output = outcome.output
    if output is not None and output.summary is not None and output.summary.omitted:
        totals.append((m.IMAGES_OMITTED, MetricUnit.Count, output.summary.omitted))
    m.emit(cluster, totals)
    if outcome.problem is not None:
        m.emit({**cluster, "Reason": outcome.problem.value}, [(m.BAD_OUTPUT, MetricUnit.Count, 1)])

    per_repository: dict[str, list[m.Metric]] = {}
    for record in output.records if output else ():
        if record.repository:
            batch = per_repository.setdefault(record.repository, [])
            batch.append((m.IMAGES_BY_STATUS[record.status], MetricUnit.Count, 1))
            if record.status == "pulled" and record.seconds is not None:
                batch.append((m.PULL_SECONDS, MetricUnit.Seconds, record.seconds))
    for repository, seconds in outcome.push_to_cached:
        per_repository.setdefault(repository, []).append((m.PUSH_TO_CACHED, MetricUnit.Seconds, seconds))
    for repository, batch in sorted(per_repository.items()):
        m.emit({**cluster, "Repository": repository}, batch)


class StatusTableMissingError(RuntimeError):
    """STATUS_TABLE is not set: a deployment error, loud rather than counting nothing."""


def require_status_table(settings: Settings) -> None:
    if not settings.status_table:
        raise StatusTableMissingError("STATUS_TABLE is not set in the function's environment")


def record_status_event(event: SsmInvocationStatusEvent, settings: Settings) -> InvocationOutcome:
    require_status_table(settings)
    detail = event.detail
    if detail.document_name != settings.document_name:
        logger.warning("status event of another document dropped", extra={"document": detail.document_name})
        return InvocationOutcome(detail.command_id, detail.instance_id, "foreign", via="event")
    return record_invocation(detail.command_id, detail.instance_id, settings, via="event")


# --- coverage -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeState:
    """A node's row for one repository (or the absence of one: it never reported)."""

    instance_id: str
    repository: str
    digest: str = ""
    cached_at: str = ""
    last_error: str = ""
    last_error_at: str = ""
    expires_at: int = 0

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> NodeState:
        return cls(
            instance_id=str(item.get("instance_id", "")),
            repository=str(item.get("repository", "")),
            digest=str(item.get("digest", "")),
            cached_at=str(item.get("cached_at", "")),
            last_error=str(item.get("last_error", "")),
            last_error_at=str(item.get("last_error_at", "")),
            expires_at=int(item.get("expires_at") or 0),
        )


@dataclass(frozen=True)
class RepositoryCoverage:
    repository: str
    newest: ResolvedImage | None
    online: tuple[str, ...]
    missing: tuple[NodeState, ...]

    @property
    def percent(self) -> float:
        """Online nodes holding the newest digest over all online nodes; 100 when there is none to hold it."""
        if not self.online or self.newest is None:
            return 100.0
        return 100.0 * (len(self.online) - len(self.missing)) / len(self.online)


def coverage_of(
    repository: str, newest: ResolvedImage | None, online: Iterable[str], states: Mapping[tuple[str, str], NodeState]
) -> RepositoryCoverage:
    """Pure: which online nodes do not hold the newest digest of a repository, with what they last reported."""
    nodes = tuple(sorted(set(online)))
    missing: tuple[NodeState, ...] = ()
    if newest is not None:
        missing = tuple(
            states.get((node, repository), NodeState(node, repository))
            for node in nodes
            if states.get((node, repository), NodeState(node, repository)).digest != newest.digest
        )
    return RepositoryCoverage(repository, newest, nodes, missing)


def online_nodes(settings: Settings) -> dict[str, Mapping[str, Any]]:
    """The online cluster nodes, by instance id, as DescribeInstanceInformation describes them."""
    nodes = {
        info["InstanceId"]: info for info in aws.online_managed_nodes(settings.node_tag_key, settings.node_tag_value)
    }
    return dict(sorted(nodes.items()))


def node_states(settings: Settings, nodes: Iterable[str]) -> dict[tuple[str, str], NodeState]:
    keys = [node_key(node, repository) for node in nodes for repository in settings.repository_names]
    states = {}
    for item in aws.batch_get_items(settings.status_table, keys):
        state = NodeState.from_item(item)
        states[(state.instance_id, state.repository)] = state
    return states


def fleet_coverage(
    settings: Settings, newest: NewestImages | None = None, online: Mapping[str, Mapping[str, Any]] | None = None
) -> tuple[list[RepositoryCoverage], dict[tuple[str, str], NodeState]]:
    """Coverage of every watched repository over the online cluster nodes: what the sweep and `make status` show."""
    newest = newest or NewestImages(settings)
    nodes = list(online_nodes(settings) if online is None else online)
    states = node_states(settings, nodes)
    coverages = [
        coverage_of(repository, newest.get(repository), nodes, states) for repository in settings.repository_names
    ]
    return coverages, states


def refresh_ttl(settings: Settings, states: Iterable[NodeState], now: datetime) -> int:
    """Push back the expiry of the rows of nodes seen online, once half their TTL has passed (few writes)."""
    refreshed = 0
    horizon = int(now.timestamp()) + settings.node_state_ttl_seconds // 2
    for state in states:
        if state.expires_at >= horizon:
            continue
        aws.update_item(
            settings.status_table,
            node_key(state.instance_id, state.repository),
            "SET expires_at = :e",
            {":e": int(now.timestamp()) + settings.node_state_ttl_seconds},
            condition="attribute_exists(pk)",
        )
        refreshed += 1
    return refreshed


def emit_coverage_metrics(coverages: Iterable[RepositoryCoverage], settings: Settings) -> None:
    cluster = {"ClusterName": settings.cluster_name}
    measured = [coverage for coverage in coverages if coverage.newest is not None]
    for coverage in measured:
        m.emit(
            {**cluster, "Repository": coverage.repository},
            [
                (m.COVERAGE, MetricUnit.Percent, coverage.percent),
                (m.NODES_MISSING_NEWEST, MetricUnit.Count, len(coverage.missing)),
            ],
        )
    if measured:
        # The worst repository, without the Repository dimension: what the coverage alarm watches (an alarm cannot
        # search over dimension values).
        m.emit(
            cluster,
            [
                (m.COVERAGE, MetricUnit.Percent, min(coverage.percent for coverage in measured)),
                (m.NODES_MISSING_NEWEST, MetricUnit.Count, sum(len(coverage.missing) for coverage in measured)),
                (m.ONLINE_NODES, MetricUnit.Count, len(measured[0].online)),
            ],
        )


# --- the sweep ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepResult:
    watermark: datetime
    next_watermark: datetime
    commands: int
    counted: int
    already_counted: int
    errors: int
    coverage: dict[str, float]
    # What the sweep saw, for the repair step that follows it (not part of the result returned).
    coverages: tuple[RepositoryCoverage, ...] = ()
    states: Mapping[tuple[str, str], NodeState] = field(default_factory=dict)
    online: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    in_flight: frozenset[str] = frozenset()
    newest: NewestImages | None = None

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


def _sweep_command(
    command: Mapping[str, Any], settings: Settings, newest: NewestImages, now: datetime
) -> _CommandTally:
    """Count the final, unclaimed invocations of one command; whether it must be looked at again."""
    command_id = command["CommandId"]
    tally = _CommandTally(still_open=command.get("Status") in {"Pending", "InProgress", "Cancelling"})
    try:
        invocations = list(aws.list_command_invocations(command_id))
    except Exception:
        # Throttled past botocore's retries, or the like: the next sweep looks again (one retry per schedule).
        logger.exception("sweep could not list a command's invocations", extra={"command_id": command_id})
        tally.errors += 1
        tally.still_open = True
        return tally
    try:
        # The claims of the finished invocations, 100 a request: a sweep's reads grow with pages, not one per node.
        claimed = claimed_nodes(settings, command_id, invocations)
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
        if instance_id in claimed:
            tally.already += 1
            continue
        try:
            outcome = record_invocation(command_id, instance_id, settings, via="sweep", newest=newest, now=now)
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
        elif outcome.result == "pending":
            tally.still_open = True
        elif outcome.result == "duplicate":
            tally.already += 1
    return tally


def load_watermark(settings: Settings, now: datetime) -> datetime:
    item = aws.get_item(settings.status_table, WATERMARK_KEY)
    stored = parse_time(item.get("watermark")) if item else None
    floor = now - timedelta(seconds=settings.sweep_max_lookback_seconds)
    start = stored or now - FIRST_SWEEP_LOOKBACK
    return max(start, floor)


def sweep(
    settings: Settings,
    *,
    now: datetime | None = None,
    time_left: Callable[[], float] | None = None,
) -> SweepResult:
    """Count every terminal invocation of our recent commands whose event never came, then measure coverage.

    The watermark moves to the oldest command that still has unfinished (or unprocessed) invocations, or to a few
    minutes before this sweep: every command is looked at until all its invocations are counted. An invocation
    that fails to be recorded is logged and left for the next sweep, which is the retry (no storm: one per schedule).
    """
    require_status_table(settings)
    now = now or datetime.now(UTC)
    watermark = load_watermark(settings, now)
    newest = NewestImages(settings)
    oldest_open: datetime | None = None
    commands = counted = already = errors = 0
    in_flight: set[str] = set()

    for command in aws.list_document_commands(settings.document_name, watermark):
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
        tally = _sweep_command(command, settings, newest, now)
        counted += tally.counted
        already += tally.already
        errors += tally.errors
        in_flight |= tally.in_flight
        if tally.still_open:
            oldest_open = min(filter(None, [oldest_open, requested]))

    next_watermark = max(min(filter(None, [oldest_open, now - WATERMARK_SAFETY])), watermark)
    aws.put_item(settings.status_table, {**WATERMARK_KEY, "watermark": timestamp(next_watermark)})

    online = online_nodes(settings)
    coverages, states = fleet_coverage(settings, newest, online)
    emit_coverage_metrics(coverages, settings)
    refresh_ttl(settings, states.values(), now)
    return SweepResult(
        watermark=watermark,
        next_watermark=next_watermark,
        commands=commands,
        counted=counted,
        already_counted=already,
        errors=errors,
        coverage={coverage.repository: round(coverage.percent, 2) for coverage in coverages if coverage.newest},
        coverages=tuple(coverages),
        states=states,
        online=online,
        in_flight=frozenset(in_flight),
        newest=newest,
    )
