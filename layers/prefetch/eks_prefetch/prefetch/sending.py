"""Sending a prefetch command at most once per event key: the one implementation every path uses.

SendCommand takes no client token, so "at most once" rests on three things:
- Powertools idempotency (DynamoDB) makes a duplicate event return the first send's command id;
- every command carries a marker of its event key in its Comment, which ListCommands returns;
- an attempt that may follow an earlier one (an expired in-progress record taken over, a retry after a failure
  whose outcome was unknown) looks for that marker among the document's recent commands before sending again, and
  botocore never re-sends SendCommand itself after an ambiguous failure (see ``aws``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from eks_prefetch import aws
from eks_prefetch.prefetch.commands import with_comment_marker
from eks_prefetch.prefetch.idempotency import run_once
from eks_prefetch.settings import SendingSettings

logger = Logger(child=True)

# ListCommands is searched from the first attempt's start, less this, for clocks that disagree.
_LOOKUP_SKEW = timedelta(minutes=5)


class SendOutcomeUnknownError(RuntimeError):
    """SendCommand failed in a way that may have reached SSM, and no such command is listed yet.

    Retry later: the next attempt looks for the command again before sending.
    """


def event_marker(key: Mapping[str, str]) -> str:
    """A short, stable name of the event key, for the command's Comment."""
    digest = hashlib.sha256(json.dumps(dict(key), sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return f"evt-{digest[:16]}"


def send_once(
    request: Mapping[str, Any],
    *,
    key: dict[str, str],
    settings: SendingSettings,
    lambda_context: LambdaContext | None = None,
    log_fields: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> tuple[str, bool]:
    """Send the SendCommand request unless one was already sent for ``key``; return (command id, sent now).

    Errors propagate and leave no idempotency record, so a retry sends, or finds what was sent. A duplicate arriving
    while the first is still sending raises IdempotencyAlreadyInProgressError.
    """
    fields = dict(log_fields or {})
    marker = event_marker(key)
    marked = with_comment_marker(request, marker)

    def send() -> dict[str, Any]:
        started = now or datetime.now(UTC)
        attempt, first_attempt_at = record_send_attempt(marker, started, settings)
        if attempt > 1:
            earlier = _earlier_command(marker, first_attempt_at, settings)
            if earlier is not None:
                logger.info(
                    "command found, sent by an earlier attempt: not sending again",
                    extra={"command_id": earlier, "attempt": attempt, "marker": marker, **fields},
                )
                return {"command_id": earlier}
        try:
            command_id = aws.ssm.send_command(marked)
        except Exception as error:
            if not aws.is_ambiguous_error(error):
                raise
            earlier = _earlier_command(marker, first_attempt_at, settings)
            if earlier is not None:
                logger.info(
                    "SendCommand reply lost, but the command was sent",
                    extra={"command_id": earlier, "marker": marker, "error": repr(error), **fields},
                )
                return {"command_id": earlier}
            logger.warning(
                "SendCommand outcome unknown: the next attempt looks for it before sending",
                extra={"marker": marker, "error": repr(error), **fields},
            )
            raise SendOutcomeUnknownError(f"SendCommand outcome unknown for {marker}: {error!r}") from error
        logger.info("prefetch command sent", extra={"command_id": command_id, "marker": marker, **fields})
        return {"command_id": command_id}

    result, ran_now = run_once(
        send,
        key=key,
        table_name=settings.idempotency_table,
        ttl_seconds=settings.idempotency_ttl_seconds,
        lambda_context=lambda_context,
    )
    if not ran_now:
        logger.info("duplicate event: command already sent", extra={"command_id": result["command_id"], **fields})
    return result["command_id"], ran_now


def record_send_attempt(marker: str, now: datetime, settings: SendingSettings) -> tuple[int, datetime]:
    """Count an attempt to send for this marker (in the idempotency table, beside Powertools' records); return
    (the attempt's number, when the first attempt began)."""
    item = aws.dynamodb.update_item(
        settings.idempotency_table,
        {"id": f"send-attempt#{marker}"},
        "SET attempts = if_not_exists(attempts, :zero) + :one, "
        "first_attempt_at = if_not_exists(first_attempt_at, :now), expiration = :expiration",
        {
            ":zero": 0,
            ":one": 1,
            ":now": now.isoformat(),
            ":expiration": int(now.timestamp()) + settings.idempotency_ttl_seconds,
        },
        returning="ALL_NEW",
    )
    assert item is not None  # unconditional: only a condition makes update_item return None
    return int(item["attempts"]), datetime.fromisoformat(item["first_attempt_at"])


def _earlier_command(marker: str, first_attempt_at: datetime, settings: SendingSettings) -> str | None:
    return aws.ssm.find_command(settings.document_name, marker, first_attempt_at - _LOOKUP_SKEW)
