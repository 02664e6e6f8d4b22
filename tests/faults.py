"""Fault injection inside moto, so that faults travel the real HTTP error path through botocore's retry logic.

botocore's Stubber answers before the retry handler runs, so it can show what an exhausted retry does, not that
retries happen; a before-send hook cannot stop moto from also executing the request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from moto.core.exceptions import ServiceException


class ThrottlingException(ServiceException):
    code = "ThrottlingException"
    message = "Rate exceeded"


def throttle_first(backend: Any, method: str, times: int) -> list[str]:
    """Make moto's ``backend.method`` answer ThrottlingException ``times`` times, then behave normally.

    Returns the list of calls that reached the backend, for counting attempts. The patch lives on the backend
    instance, which moto discards when its mock ends, so nothing outlives the test.
    """
    calls: list[str] = []
    real = getattr(backend, method)

    def throttled(*args: Any, **kwargs: Any) -> Any:
        calls.append(method)
        if len(calls) <= times:
            raise ThrottlingException()
        return real(*args, **kwargs)

    setattr(backend, method, throttled)
    return calls


class InternalServerError(ServiceException):
    code = "InternalServerError"
    message = "Internal server error"


def fail_completed_saves(backend: Any) -> tuple[list[str], Callable[[], None]]:
    """Make moto's DynamoDB fail (HTTP 500, through botocore's retries) every update that marks an idempotency
    record COMPLETED; every other update, and every put, behaves normally. Returns the failed calls, and a function
    that ends the fault."""
    failed: list[str] = []
    real = backend.update_item

    def update_item(*args: Any, **kwargs: Any) -> Any:
        status = (kwargs.get("expression_attribute_values") or {}).get(":status", {}).get("S")
        if status == "COMPLETED":
            failed.append(status)
            raise InternalServerError()
        return real(*args, **kwargs)

    def heal() -> None:
        backend.update_item = real

    backend.update_item = update_item
    return failed, heal


def lose_replies(client: Any, operation: str, times: int) -> list[int]:
    """The first ``times`` calls of ``operation`` reach moto and are carried out, but their reply is lost: botocore
    sees a read timeout, as from an answer that never came back over the wire.

    A before-send handler of the client runs moto's own request handler, then raises ReadTimeoutError, which
    botocore's endpoint treats as a transport fault (its retry handler decides what happens next). Returns the
    status codes of the calls moto answered.
    """
    from botocore.exceptions import ReadTimeoutError  # noqa: PLC0415
    from moto.core.models import botocore_stubber  # noqa: PLC0415

    answered: list[int] = []
    event = f"before-send.{client.meta.service_model.service_id.hyphenize()}.{operation}"

    def carried_out_then_lost(request: Any, **kwargs: Any) -> Any:
        response = botocore_stubber(request=request, **kwargs)
        answered.append(response.status_code)
        if len(answered) <= times:
            raise ReadTimeoutError(endpoint_url=request.url)
        return response

    client.meta.events.register_first(event, carried_out_then_lost)
    return answered


def reset_first_connection(client: Any, operation: str) -> list[str]:
    """The first call of ``operation`` has its connection reset after the request was written, before the service
    saw it (ConnectionClosedError from the client's before-send): botocore cannot tell whether it was carried out.
    Returns the URLs of the calls reset."""
    from botocore.exceptions import ConnectionClosedError  # noqa: PLC0415

    resets: list[str] = []
    event = f"before-send.{client.meta.service_model.service_id.hyphenize()}.{operation}"

    def reset_first(request: Any, **_: Any) -> None:
        if not resets:
            resets.append(request.url)
            raise ConnectionClosedError(endpoint_url=request.url)

    client.meta.events.register_first(event, reset_first)
    return resets


class InvalidInstanceId(ServiceException):
    code = "InvalidInstanceId"
    message = "Instances not in a valid state for account"


def refuse_instances(backend: Any, refused: set[str]) -> list[list[str]]:
    """Make moto's SSM refuse, as SSM does, a whole SendCommand naming an instance it does not accept
    (InvalidInstanceId), through botocore's real error path. Returns the instance ids of every SendCommand that
    reached it."""
    calls: list[list[str]] = []
    real = backend.send_command

    def send_command(*args: Any, **kwargs: Any) -> Any:
        instance_ids = list(kwargs.get("instance_ids") or [])
        calls.append(instance_ids)
        if refused & set(instance_ids):
            raise InvalidInstanceId()
        return real(*args, **kwargs)

    backend.send_command = send_command
    return calls
