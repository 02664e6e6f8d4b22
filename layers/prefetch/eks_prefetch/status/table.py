"""The status table: the only module that knows its keys and update expressions.

One table, ``pk``/``sk``, TTL on ``expires_at``:
- ``NODE#<instance>`` / ``REPO#<repository>`` (``NodeState``): the digest last pulled or cached there and when; the
  last failure with its reason and time; the last report that the node cannot be served (no containerd socket).
- ``NODE#<instance>`` / ``NODE`` (``NodeRow``): the launch whose first report was measured (LaunchToCachedSeconds
  once per launch), and the node's self-repair record (for which digests, how often, when next).
- ``INVOCATION#<command>`` / ``<instance>``: the claim of a counted invocation, with its final status.
- ``SWEEP`` / ``WATERMARK``: where the next sweep starts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from eks_prefetch import aws
from eks_prefetch.settings import StatusTableSettings

WATERMARK_KEY = {"pk": "SWEEP", "sk": "WATERMARK"}


def node_key(instance_id: str, repository: str) -> dict[str, str]:
    return {"pk": f"NODE#{instance_id}", "sk": f"REPO#{repository}"}


def node_row_key(instance_id: str) -> dict[str, str]:
    """The node's own row, beside its per-repository rows."""
    return {"pk": f"NODE#{instance_id}", "sk": "NODE"}


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


def _node_expiry(settings: StatusTableSettings, at: datetime) -> int:
    return int(at.timestamp()) + settings.node_state_ttl_seconds


# --- a node's image state, per repository ---------------------------------------------------------------------------


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
    # The digest the node reported as having no manifest for its OS/architecture: for that image, the node is not
    # applicable (outside the repository's coverage, never repaired for it).
    not_applicable_digest: str = ""
    # Who recorded the last failure: the script's own record ("failed", "skipped") or SSM's status of a run that said
    # nothing about the image ("Failed", "DeliveryTimedOut", ...).
    last_error_kind: str = ""
    # The node's last report that it cannot be served (the script found no containerd socket), and when.
    unsupported_reason: str = ""
    unsupported_at: str = ""

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
            not_applicable_digest=str(item.get("not_applicable_digest", "")),
            last_error_kind=str(item.get("last_error_kind", "")),
            unsupported_reason=str(item.get("unsupported_reason", "")),
            unsupported_at=str(item.get("unsupported_at", "")),
        )


def record_held(
    settings: StatusTableSettings,
    instance_id: str,
    repository: str,
    *,
    digest: str,
    status: str,
    command_id: str,
    at: datetime,
    pushed_at: datetime | None,
) -> bool:
    """The node holds this digest as of ``at``. The row moves only to a newer image (by push time, ``pushed_at``:
    None when ECR no longer knows the image), never back to an older one, whatever order the reports come in.

    True if this command's report is the one that moved the row to this digest. Idempotent: a retry after a lost
    reply, a duplicate delivery or the sweep recording the same invocation again get the same answer, so that a
    latency measured from it survives any of them.
    """
    key = node_key(instance_id, repository)
    values = {
        ":i": instance_id,
        ":r": repository,
        ":d": digest,
        ":s": status,
        ":t": timestamp(at),
        ":c": command_id,
        ":e": _node_expiry(settings, at),
        ":p": timestamp(pushed_at) if pushed_at else "",
    }

    def move() -> bool:
        old = aws.dynamodb.update_item(
            settings.status_table,
            key,
            "SET instance_id = :i, repository = :r, digest = :d, image_status = :s, cached_at = :t, "
            "command_id = :c, expires_at = :e, image_pushed_at = :p, held_since_command = :c",
            values,
            condition="attribute_not_exists(digest) OR (digest <> :d AND (attribute_not_exists(image_pushed_at) "
            "OR image_pushed_at < :p OR (image_pushed_at = :p AND cached_at <= :t)))",
        )
        return old is not None

    def refresh() -> dict[str, Any] | None:
        # The same digest again: a newer report refreshes the row, an older one leaves it.
        return aws.dynamodb.update_item(
            settings.status_table,
            key,
            "SET image_status = :s, cached_at = :t, command_id = :c, expires_at = :e",
            {name: values[name] for name in (":d", ":s", ":t", ":c", ":e")},
            condition="digest = :d AND cached_at <= :t",
            returning="ALL_NEW",
        )

    # A pulled image is usually new on the node, a cached one usually not: the likelier write goes first.
    if status == "pulled" and move():
        return True
    refreshed = refresh()
    if refreshed is not None:
        return refreshed.get("held_since_command") == command_id
    if status != "pulled" and move():
        return True
    # Neither: an older image than the row's, or an older report of the same digest (after our own move, maybe).
    row = aws.dynamodb.get_item(settings.status_table, key) or {}
    return row.get("digest") == digest and row.get("held_since_command") == command_id


def record_failure(
    settings: StatusTableSettings,
    instance_id: str,
    repository: str,
    *,
    reason: str,
    kind: str,
    digest: str,
    command_id: str,
    at: datetime,
    not_applicable: bool = False,
) -> None:
    """A failure or skip of the image on the node; ``not_applicable``: a skip because the image has no manifest for
    the node's platform, remembered by digest (the next image of the repository may have one)."""
    update = (
        "SET instance_id = :i, repository = :r, last_error = :m, last_error_kind = :k, last_error_digest = :d, "
        "last_error_command = :c, last_error_at = :t, expires_at = :e"
    )
    if not_applicable and digest:
        update += ", not_applicable_digest = :d"
    aws.dynamodb.update_item(
        settings.status_table,
        node_key(instance_id, repository),
        update,
        {
            ":i": instance_id,
            ":r": repository,
            ":m": reason[:500],
            ":k": kind,
            ":d": digest,
            ":c": command_id,
            ":t": timestamp(at),
            ":e": _node_expiry(settings, at),
        },
        # An older failure never overwrites a newer one.
        condition="attribute_not_exists(last_error_at) OR last_error_at <= :t",
    )


def record_unsupported(
    settings: StatusTableSettings, instance_id: str, repository: str, *, reason: str, command_id: str, at: datetime
) -> None:
    """The node reported it cannot be served (no containerd socket), on its row of a repository it was sent. The
    newest such report wins; a later report of the node's images supersedes it (``coverage.reported_unsupported``),
    so nothing has to be removed when the node comes good, whatever order the reports are recorded in."""
    aws.dynamodb.update_item(
        settings.status_table,
        node_key(instance_id, repository),
        "SET instance_id = :i, repository = :r, unsupported_reason = :m, unsupported_at = :t, "
        "unsupported_command = :c, expires_at = :e",
        {
            ":i": instance_id,
            ":r": repository,
            ":m": reason[:500],
            ":t": timestamp(at),
            ":c": command_id,
            ":e": _node_expiry(settings, at),
        },
        condition="attribute_not_exists(unsupported_at) OR unsupported_at <= :t",
    )


def read_node_states(
    settings: StatusTableSettings, nodes: Iterable[str], repositories: Iterable[str]
) -> dict[tuple[str, str], NodeState]:
    """The rows of these nodes for these repositories, by (instance, repository); absent rows are left out."""
    keys = [node_key(node, repository) for node in nodes for repository in repositories]
    states = {}
    for item in aws.dynamodb.batch_get_items(settings.status_table, keys):
        state = NodeState.from_item(item)
        states[(state.instance_id, state.repository)] = state
    return states


def refresh_expiry(settings: StatusTableSettings, state: NodeState, now: datetime) -> None:
    """Push back the expiry of a row that still exists."""
    aws.dynamodb.update_item(
        settings.status_table,
        node_key(state.instance_id, state.repository),
        "SET expires_at = :e",
        {":e": _node_expiry(settings, now)},
        condition="attribute_exists(pk)",
    )


# --- the node's own row: first report of a launch, self-repair ------------------------------------------------------


def record_report(settings: StatusTableSettings, instance_id: str, *, at: datetime) -> None:
    """Note that the node reported (any command but the new-node path's), as of ``at``: a new-node report recorded
    after it, of a launch before it, is not that launch's first (``record_first_report``). One conditional write,
    the newest report winning; the launch itself is not needed for it."""
    aws.dynamodb.update_item(
        settings.status_table,
        node_row_key(instance_id),
        "SET last_report_at = :t, expires_at = :e",
        {":t": timestamp(at), ":e": _node_expiry(settings, at)},
        condition="attribute_not_exists(last_report_at) OR last_report_at < :t",
    )


def record_first_report(
    settings: StatusTableSettings, instance_id: str, *, launched: datetime, at: datetime, command_id: str
) -> bool:
    """Note the node's first report since this launch. True if this command's report is that first one (measured
    once per launch): no report of this launch recorded before it, by the new-node path or any other command
    (``record_report``). Idempotent like ``record_held``."""
    key = node_row_key(instance_id)
    launch = timestamp(launched)
    first = aws.dynamodb.update_item(
        settings.status_table,
        key,
        "SET first_report_launch = :l, first_report_at = :t, first_report_command = :c, expires_at = :e",
        {":l": launch, ":t": timestamp(at), ":c": command_id, ":e": _node_expiry(settings, at)},
        condition="(attribute_not_exists(first_report_launch) OR first_report_launch <> :l) "
        "AND (attribute_not_exists(last_report_at) OR last_report_at < :l)",
    )
    if first is not None:
        return True
    row = aws.dynamodb.get_item(settings.status_table, key) or {}
    return row.get("first_report_launch") == launch and row.get("first_report_command") == command_id


@dataclass(frozen=True)
class RepairState:
    """What the node's row records of repairs: for which digests, how often, when last sent, when next allowed."""

    digests: str = ""
    attempts: int = 0
    sent_at: str = ""
    next_at: str = ""
    command_id: str = ""

    @classmethod
    def from_item(cls, item: Mapping[str, Any] | None) -> RepairState:
        item = item or {}
        return cls(
            digests=str(item.get("repair_digests", "")),
            attempts=int(item.get("repair_attempts") or 0),
            sent_at=str(item.get("repair_sent_at", "")),
            next_at=str(item.get("repair_next_at", "")),
            command_id=str(item.get("repair_command_id", "")),
        )

    def for_gap(self, digests: str) -> RepairState:
        """The state that applies to this gap: a new gap (another set of digests) starts without backoff."""
        return self if self.digests == digests else RepairState()


def read_repair_states(settings: StatusTableSettings, nodes: Iterable[str]) -> dict[str, RepairState]:
    items = aws.dynamodb.batch_get_items(settings.status_table, [node_row_key(node) for node in nodes])
    return {str(item["pk"]).removeprefix("NODE#"): RepairState.from_item(item) for item in items}


def record_repair_attempt(
    settings: StatusTableSettings,
    instance_id: str,
    *,
    digests: str,
    attempts: int,
    next_at: datetime,
    now: datetime,
    command_id: str | None,
) -> None:
    """Count a repair attempt on the node's row. ``command_id`` None: SSM refused the node, so nothing is in flight
    and only the backoff is recorded."""
    values: dict[str, Any] = {
        ":g": digests,
        ":a": attempts,
        ":n": timestamp(next_at),
        ":e": _node_expiry(settings, now),
    }
    update = "SET repair_digests = :g, repair_attempts = :a, repair_next_at = :n, expires_at = :e"
    if command_id is not None:
        update += ", repair_sent_at = :s, repair_command_id = :c"
        values.update({":s": timestamp(now), ":c": command_id})
    aws.dynamodb.update_item(settings.status_table, node_row_key(instance_id), update, values)


# --- the sweep's watermark ------------------------------------------------------------------------------------------


def read_watermark(settings: StatusTableSettings) -> datetime | None:
    item = aws.dynamodb.get_item(settings.status_table, WATERMARK_KEY)
    return parse_time(item.get("watermark")) if item else None


def write_watermark(settings: StatusTableSettings, watermark: datetime) -> None:
    aws.dynamodb.put_item(settings.status_table, {**WATERMARK_KEY, "watermark": timestamp(watermark)})
