"""At-most-once sending on top of Powertools idempotency (DynamoDB), for events delivered at least once."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.typing import LambdaContext

from eks_prefetch import aws


def _persistence(table_name: str) -> DynamoDBPersistenceLayer:
    # On the shared client, whose retries are bounded by the invocation's time like every other call's; one per
    # client, so that resetting the clients (tests) resets it too.
    return _persistence_on(table_name, aws.client("dynamodb"))


@functools.cache
def _persistence_on(table_name: str, client: Any) -> DynamoDBPersistenceLayer:
    return DynamoDBPersistenceLayer(table_name=table_name, boto3_client=client)


def run_once(
    action: Callable[[], dict[str, Any]],
    *,
    key: dict[str, str],
    table_name: str,
    ttl_seconds: int,
    lambda_context: LambdaContext | None = None,
) -> tuple[dict[str, Any], bool]:
    """Run ``action`` once per ``key`` within the TTL and return (its result, whether it ran now).

    A duplicate gets the first run's stored result. A failed run leaves no record, so a retry runs again; a duplicate
    that arrives while the first is still running raises IdempotencyAlreadyInProgressError, and is retried later.
    """
    config = IdempotencyConfig(expires_after_seconds=ttl_seconds, raise_on_no_idempotency_key=True)
    if lambda_context is not None:
        config.register_lambda_context(lambda_context)
    ran_now = False

    def guarded(idempotency_key: dict[str, str]) -> dict[str, Any]:
        nonlocal ran_now
        ran_now = True
        return action()

    once = idempotent_function(
        guarded,
        data_keyword_argument="idempotency_key",
        persistence_store=_persistence(table_name),
        config=config,
    )
    result = once(idempotency_key=key)
    return result, ran_now
