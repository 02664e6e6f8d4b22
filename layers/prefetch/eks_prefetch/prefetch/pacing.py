"""Pacing the new-node path's pulls within the registry path's budget, across invocations and containers.

A push's fleet command paces its own pulls (its MaxConcurrency: ``commands.pulls_at_once``). A new node gets a command
of its own, so a scale-out of hundreds of nodes would start every pull at once. The same rule holds them: one item
of the idempotency table keeps a schedule (GCRA, the generic cell rate algorithm). Each new node's command reserves
its share of the schedule, one pull's time over the pulls the budget carries at once, and may start while the
schedule runs at most one pull's time ahead of now: as many nodes pull at once as a fleet command's MaxConcurrency
lets, and the next start as one would end. A node beyond that waits for its slot through the queue (its message
hidden until then), and its reservation is kept, so that a launch never reserves twice.

The schedule is a budget guard, not a correctness condition: if DynamoDB cannot be asked, the node is sent its
command now (and the log says so), rather than kept waiting for the queue's visibility timeout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from eks_prefetch import aws
from eks_prefetch.images import ResolvedImage
from eks_prefetch.prefetch.commands import pull_seconds, pulls_at_once
from eks_prefetch.settings import SendingSettings

# The schedule's item in the idempotency table (beside Powertools' records and the send-attempt counters).
SCHEDULE_KEY = {"id": "pacing#new-nodes"}
# Reservations and the schedule outlive their moment by this much, then expire (the table's TTL).
_KEPT_SECONDS = 86_400
# A slot less than this ahead is now: the schedule's rounding, and less than the queue takes to deliver again.
_SLACK_SECONDS = 1.0


@dataclass(frozen=True)
class Slot:
    """When a new node may start its pulls (epoch seconds), and how many nodes the schedule lets pull at once."""

    start_at: float
    at_once: int


def burst_pulls_at_once(images: Sequence[ResolvedImage], settings: SendingSettings) -> int:
    """How many new nodes with these images may pull at once: the user's MaxConcurrency when it is a count (the
    number of nodes pulling at once, whatever the command), else the registry path's budget over one pull."""
    if settings.max_concurrency.isdigit():
        return int(settings.max_concurrency)
    return pulls_at_once(images, settings)


def reserve(
    marker: str,
    images: Sequence[ResolvedImage],
    settings: SendingSettings,
    now: float,
    *,
    may_have_reserved: bool,
) -> Slot:
    """The slot of this launch's pulls (``marker``: its event marker): one an earlier delivery reserved, or a new
    one. ``may_have_reserved`` False (the message's first receive) skips looking for an earlier reservation."""
    at_once = burst_pulls_at_once(images, settings)
    if may_have_reserved:
        earlier = aws.dynamodb.get_item(settings.idempotency_table, _reservation_key(marker))
        if earlier is not None:
            start_at = float(earlier["start_at"])
            return Slot(now if start_at <= now + _SLACK_SECONDS else start_at, at_once)
    seconds = pull_seconds(images)
    interval = seconds / at_once
    scheduled = _advance(settings.idempotency_table, interval, now)
    # GCRA: the schedule may run one pull's time (less this node's own interval) ahead of now.
    start_at = scheduled - (seconds - interval)
    if start_at <= now + _SLACK_SECONDS:
        return Slot(now, at_once)
    aws.dynamodb.put_item(
        settings.idempotency_table,
        {**_reservation_key(marker), "start_at": _decimal(start_at), "expiration": _expiry(start_at)},
    )
    return Slot(start_at, at_once)


def _reservation_key(marker: str) -> dict[str, str]:
    return {"id": f"pacing#{marker}"}


# Whether this container last found the schedule ahead of now (a burst) or behind it (idle): the likelier of the two
# conditional updates goes first, so that a reservation is one write either way, most of the time.
_last_found_ahead = False


def _advance(table: str, interval: float, now: float) -> float:
    """Move the schedule on by ``interval``, atomically; return where it stood for this reservation: the later of
    the schedule and now. Ahead of now (a burst), it moves on from where it is; behind (idle), it restarts from now.
    Each is one conditional update; between the two the schedule only moves on, so a third attempt always lands."""
    global _last_found_ahead  # noqa: PLW0603 - a hint for the next reservation in this container, nothing more
    values = {":interval": _decimal(interval), ":now": _decimal(now), ":expiration": _expiry(now + interval)}
    attempts = [True, False, True] if _last_found_ahead else [False, True, False]
    for ahead in attempts:
        if ahead:
            old = aws.dynamodb.update_item(
                table,
                SCHEDULE_KEY,
                "SET tat = tat + :interval, expiration = :expiration",
                values,
                condition="tat >= :now",
                returning="UPDATED_OLD",
            )
            if old is not None:
                _last_found_ahead = True
                return float(old["tat"])
        else:
            restarted = aws.dynamodb.update_item(
                table,
                SCHEDULE_KEY,
                "SET tat = :now + :interval, expiration = :expiration",
                values,
                condition="attribute_not_exists(tat) OR tat < :now",
            )
            if restarted is not None:
                _last_found_ahead = False
                return now
    raise RuntimeError("the new-node schedule moved under three attempts in a row")


def _decimal(seconds: float) -> Decimal:
    """Epoch seconds to the millisecond, as DynamoDB's number type takes them."""
    return Decimal(f"{seconds:.3f}")


def _expiry(seconds: float) -> int:
    return math.ceil(seconds) + _KEPT_SECONDS
