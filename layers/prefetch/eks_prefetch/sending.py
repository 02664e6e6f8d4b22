"""Sending a prefetch command at most once per event key: the one implementation every path uses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from eks_prefetch import aws
from eks_prefetch.idempotency import run_once
from eks_prefetch.settings import Settings

logger = Logger(child=True)


def send_once(
    request: Mapping[str, Any],
    *,
    key: dict[str, str],
    settings: Settings,
    lambda_context: LambdaContext | None = None,
    log_fields: Mapping[str, Any] | None = None,
) -> tuple[str, bool]:
    """Send the SendCommand request unless one was already sent for ``key``; return (command id, sent now).

    Errors propagate and leave no idempotency record, so a retry sends. A duplicate arriving while the first is
    still sending raises IdempotencyAlreadyInProgressError.
    """
    fields = dict(log_fields or {})

    def send() -> dict[str, Any]:
        command_id = aws.send_command(request)
        logger.info("prefetch command sent", extra={"command_id": command_id, **fields})
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
