"""The one retry and deadline policy every AWS client shares.

Clients are created on first use, so tests (moto, Stubber) take effect, and share one retry policy: botocore's
standard mode retries throttling and transient faults with jittered backoff. Two guards sit in front of it, on every
client's ``needs-retry`` event:

- SendCommand is not idempotent, so it is never retried blindly after an ambiguous failure (the request may have
  reached SSM: a read timeout, a reset connection, a 5xx). ``sending`` looks the command up instead.
- No retry starts that could outlast the invocation: with a deadline set from the Lambda context, a retry is allowed
  only while its worst-case backoff plus one whole attempt still fits.

(Adaptive mode is not used: its client-side rate limiter can block before a send for as long as throttling lasts,
which no deadline bounds.)
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar

import boto3
from aws_lambda_powertools import Logger
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
)

logger = Logger(child=True)

CONNECT_TIMEOUT_SECONDS = 3
READ_TIMEOUT_SECONDS = 10
MAX_ATTEMPTS = 8
# botocore's standard mode sleeps at most this long between attempts.
MAX_BACKOFF_SECONDS = 20
# The longest one attempt can take: connecting, then waiting for the answer.
WORST_ATTEMPT_SECONDS = CONNECT_TIMEOUT_SECONDS + READ_TIMEOUT_SECONDS
# Kept free at the end of an invocation to log and return a result.
RESERVE_SECONDS = 2.0

RETRY_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
    connect_timeout=CONNECT_TIMEOUT_SECONDS,
    read_timeout=READ_TIMEOUT_SECONDS,
)

# Operations that create something on each call that reaches AWS: never re-sent after an ambiguous failure.
NOT_IDEMPOTENT = frozenset({("ssm", "SendCommand")})

# botocore's standard retry mode's throttling codes (botocore.retries.standard): "too fast", never "refused".
THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
    }
)

_clock: Callable[[], float] = time.monotonic
_deadline: float | None = None


def set_deadline(remaining_seconds: float | None) -> None:
    """Bound every call's retries by the time this invocation has left (None: no bound)."""
    global _deadline  # noqa: PLW0603 - one invocation at a time per Lambda container
    _deadline = None if remaining_seconds is None else _clock() + remaining_seconds - RESERVE_SECONDS


def seconds_left() -> float | None:
    """Seconds until the invocation's deadline (less the reserve), or None without one."""
    return None if _deadline is None else _deadline - _clock()


Handler = TypeVar("Handler", bound=Callable[..., Any])


def within_invocation_time(handler: Handler) -> Handler:
    """Decorate a Lambda handler so that AWS retries never outlast its invocation."""

    @functools.wraps(handler)
    def bounded(event: Any, context: Any) -> Any:
        remaining_ms = getattr(context, "get_remaining_time_in_millis", None)
        set_deadline(remaining_ms() / 1000 if remaining_ms else None)
        try:
            return handler(event, context)
        finally:
            set_deadline(None)

    return bounded  # type: ignore[return-value]


def is_ambiguous_failure(caught_exception: BaseException | None, response: Any) -> bool:
    """Whether the request may have reached AWS and been carried out although no success came back."""
    if caught_exception is not None:
        # Not connected at all: the request never left. Anything else on the wire (read timeout, reset) may have.
        return isinstance(caught_exception, HTTPClientError) and not isinstance(
            caught_exception, (EndpointConnectionError, ConnectTimeoutError)
        )
    if response is not None:
        http, _parsed = response
        return getattr(http, "status_code", 0) >= 500
    return False


def is_throttling(error: BaseException) -> bool:
    """Whether a client error is AWS saying "too fast" (botocore's own list of throttling codes)."""
    return isinstance(error, ClientError) and error.response.get("Error", {}).get("Code") in THROTTLING_CODES


def error_code(error: BaseException) -> str:
    return error.response.get("Error", {}).get("Code", "") if isinstance(error, ClientError) else ""


def is_ambiguous_error(error: BaseException) -> bool:
    """Whether an error a call raised may hide a request that AWS carried out (see is_ambiguous_failure)."""
    if isinstance(error, ClientError):
        return error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) >= 500
    return is_ambiguous_failure(error, None)


def _retry_guard(
    attempts: int,
    operation: Any = None,
    response: Any = None,
    caught_exception: BaseException | None = None,
    **_: Any,
) -> bool | None:
    """False vetoes the retry botocore's retry handler would make; None leaves the decision to it."""
    name = (operation.service_model.service_name, operation.name) if operation is not None else None
    if name in NOT_IDEMPOTENT and is_ambiguous_failure(caught_exception, response):
        logger.warning(
            "not retrying a non-idempotent call after an ambiguous failure",
            extra={
                "operation": name[1],
                "attempts": attempts,
                "error": repr(caught_exception) if caught_exception else None,
            },
        )
        return False
    left = seconds_left()
    if left is not None and left < min(MAX_BACKOFF_SECONDS, 2 ** (attempts - 1)) + WORST_ATTEMPT_SECONDS:
        if response is not None or caught_exception is not None:
            logger.warning(
                "no time left in this invocation for another retry",
                extra={"operation": name[1] if name else None, "attempts": attempts, "seconds_left": round(left, 1)},
            )
        return False
    return None


@functools.cache
def client(service: str) -> Any:
    created = boto3.client(service, config=RETRY_CONFIG)
    # First among the service's needs-retry handlers, so that its False wins over the retry handler's delay.
    created.meta.events.register_first(f"needs-retry.{created.meta.service_model.service_id.hyphenize()}", _retry_guard)
    return created


def reset_clients() -> None:
    """Forget cached clients (tests start each AWS mock with new ones)."""
    client.cache_clear()
