"""Claims in the status table: each (command, node) invocation counted exactly once, by whichever recording (the
status event's or the sweep's) claims it first; a claim left unfinished by a recording that died is taken over once
it is stale. The rows' keys are the table's (``table.claim_key``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from eks_prefetch import aws
from eks_prefetch.settings import StatusSettings
from eks_prefetch.status.table import claim_key, parse_time, timestamp


class Standing(Enum):
    COUNTED = "counted"
    # Claimed by a recording that has not said it emitted its metrics yet: still at work, or dead.
    IN_PROGRESS = "in progress"
    # Claimed so long ago that the recording cannot be alive (a function outlives none of its timeouts): taken over.
    STALE = "stale"


# Beyond the status function's timeout (300 s in template.yaml, a test checks), so that a claim in progress that is
# this old was left by a recording that died between its claim and its metrics.
CLAIM_STALE_SECONDS = 900


@dataclass(frozen=True)
class Claim:
    """The claim of an invocation: whose recording wrote it (``token``), and whether its metrics were emitted."""

    token: str
    state: str
    claimed_at: str

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> Claim:
        # Claims written before tokens were recorded counted before they were written.
        return cls(str(item.get("token", "")), str(item.get("state", "counted")), str(item.get("counted_at", "")))

    def standing(self, now: datetime) -> Standing:
        if self.state == "counted":
            return Standing.COUNTED
        claimed_at = parse_time(self.claimed_at)
        if claimed_at is not None and (now - claimed_at).total_seconds() < CLAIM_STALE_SECONDS:
            return Standing.IN_PROGRESS
        return Standing.STALE


def read_claim(settings: StatusSettings, command_id: str, instance_id: str) -> Claim | None:
    item = aws.dynamodb.get_item(settings.status_table, claim_key(command_id, instance_id))
    return Claim.from_item(item) if item else None


def read_claims(settings: StatusSettings, command_id: str, instance_ids: Iterable[str]) -> dict[str, Claim]:
    """The claims of the command's invocations on these nodes, by node (BatchGetItem, 100 keys a request)."""
    keys = [claim_key(command_id, instance_id) for instance_id in instance_ids]
    if not keys:
        return {}
    items = aws.dynamodb.batch_get_items(settings.status_table, keys)
    return {str(item["sk"]): Claim.from_item(item) for item in items}


def claim(
    settings: StatusSettings,
    command_id: str,
    instance_id: str,
    *,
    token: str,
    status: str,
    via: str,
    now: datetime,
    replacing: Claim | None = None,
) -> bool:
    """Claim the invocation for counting, or take over a stale claim (``replacing``); True if the claim is this
    recording's (``token``), also when the reply to its write was lost and the retry found its own claim."""
    key = claim_key(command_id, instance_id)
    values = {
        "status": status,
        "via": via,
        "token": token,
        "state": "claimed",
        "counted_at": timestamp(now),
        # Outlives the sweep's reach, so that the sweep never counts it again.
        "expires_at": int(now.timestamp()) + settings.sweep_max_lookback_seconds + 86_400,
    }
    if replacing is None:
        written = aws.dynamodb.put_new_item(settings.status_table, {**key, **values})
    else:
        written = (
            aws.dynamodb.update_item(
                settings.status_table,
                key,
                "SET #status = :status, via = :via, #token = :token, #state = :state, counted_at = :counted_at, "
                "expires_at = :expires_at",
                {f":{name}": value for name, value in values.items()} | {":old": replacing.token},
                condition="#token = :old AND #state = :state",
                names={"#status": "status", "#token": "token", "#state": "state"},
            )
            is not None
        )
    if written:
        return True
    mine = read_claim(settings, command_id, instance_id)
    return mine is not None and mine.token == token


def mark_counted(settings: StatusSettings, command_id: str, instance_id: str, token: str) -> None:
    """The claimant emitted the metrics: the claim is final."""
    aws.dynamodb.update_item(
        settings.status_table,
        claim_key(command_id, instance_id),
        "SET #state = :counted",
        {":counted": "counted", ":token": token},
        condition="#token = :token",
        names={"#state": "state", "#token": "token"},
    )
