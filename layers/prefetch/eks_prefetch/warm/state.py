"""The warm planner's one row in the status table: is a build wanted, and when did the last one start.

Kept in the status table (``WARM`` / ``BUILD``, beside the keys ``status_table`` owns, which never start with
``WARM``) rather than in an SSM parameter: a conditional write makes claiming a build atomic, so two planner runs
(a tick and a push, a retried invocation) never both start one; SSM's PutParameter has no condition and a low rate
limit. The table exists in every deployment, and the planner's policy is limited to this key.

- ``last_push_at``: when the planner last heard of a push of a watched repository;
- ``last_resolved_at``: when the last plan listed the repositories; pushes before it are in that plan, so a build is
  *wanted* while ``last_push_at`` is later;
- ``last_started_at``, ``last_execution``, ``last_ami``: the last build the planner started, and for which AMI.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from eks_prefetch import aws
from eks_prefetch.settings import StatusTableSettings
from eks_prefetch.status.table import parse_time, timestamp

WARM_KEY = {"pk": "WARM", "sk": "BUILD"}


@dataclass(frozen=True)
class WarmState:
    last_push_at: datetime | None = None
    last_resolved_at: datetime | None = None
    last_started_at: datetime | None = None
    last_execution: str = ""
    last_ami: str = ""

    @property
    def wanted(self) -> bool:
        """A push came after the last plan listed the repositories."""
        return self.last_push_at is not None and (
            self.last_resolved_at is None or self.last_push_at > self.last_resolved_at
        )


def read_state(settings: StatusTableSettings) -> WarmState:
    item = aws.dynamodb.get_item(settings.status_table, WARM_KEY) or {}
    return WarmState(
        last_push_at=parse_time(item.get("last_push_at")),
        last_resolved_at=parse_time(item.get("last_resolved_at")),
        last_started_at=parse_time(item.get("last_started_at")),
        last_execution=str(item.get("last_execution", "")),
        last_ami=str(item.get("last_ami", "")),
    )


def record_push(settings: StatusTableSettings, at: datetime) -> None:
    """A build is wanted. Never moves ``last_push_at`` back (events arrive out of order)."""
    _advance(settings, "last_push_at", at)


def record_resolved(settings: StatusTableSettings, at: datetime) -> None:
    """A plan listed the repositories at ``at``: pushes before it need no build of their own."""
    _advance(settings, "last_resolved_at", at)


def _advance(settings: StatusTableSettings, attribute: str, at: datetime) -> None:
    """Set the row's time ``attribute`` to ``at``, only forward."""
    aws.dynamodb.update_item(
        settings.status_table,
        WARM_KEY,
        f"SET {attribute} = :at",
        {":at": timestamp(at)},
        condition=f"attribute_not_exists({attribute}) OR {attribute} < :at",
    )


def claim_build(
    settings: StatusTableSettings, seen: WarmState, *, at: datetime, resolved_at: datetime, execution: str, ami: str
) -> bool:
    """Record that this run starts a build; False if another run started one since ``seen`` was read (the loser
    starts nothing). ``resolved_at``: when the build's plan listed the repositories."""
    values = {":at": timestamp(at), ":resolved": timestamp(resolved_at), ":execution": execution, ":ami": ami}
    if seen.last_started_at is None:
        condition = "attribute_not_exists(last_started_at)"
    else:
        condition = "last_started_at = :seen"
        values[":seen"] = timestamp(seen.last_started_at)
    return (
        aws.dynamodb.update_item(
            settings.status_table,
            WARM_KEY,
            "SET last_started_at = :at, last_resolved_at = :resolved, last_execution = :execution, last_ami = :ami",
            values,
            condition=condition,
        )
        is not None
    )


def release_claim(settings: StatusTableSettings, seen: WarmState, execution: str) -> None:
    """Undo a claim whose execution did not start, so that the next tick tries again (only if it is still ours)."""
    values: dict[str, object] = {":execution": execution}
    sets = []
    removes = []
    for name, value in (
        ("last_started_at", seen.last_started_at and timestamp(seen.last_started_at)),
        ("last_resolved_at", seen.last_resolved_at and timestamp(seen.last_resolved_at)),
        ("last_execution", seen.last_execution),
        ("last_ami", seen.last_ami),
    ):
        if value:
            sets.append(f"{name} = :{name}")
            values[f":{name}"] = value
        else:
            removes.append(name)
    update = " ".join(
        part for part in (sets and "SET " + ", ".join(sets), removes and "REMOVE " + ", ".join(removes)) if part
    )
    aws.dynamodb.update_item(settings.status_table, WARM_KEY, update, values, condition="last_execution = :execution")
