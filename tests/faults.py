"""Fault injection inside moto, so that faults travel the real HTTP error path through botocore's retry logic.

botocore's Stubber answers before the retry handler runs, so it can show what an exhausted retry does, not that
retries happen; a before-send hook cannot stop moto from also executing the request.
"""

from __future__ import annotations

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
