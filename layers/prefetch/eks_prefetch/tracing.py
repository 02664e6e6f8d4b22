"""X-Ray tracing, built only when it is switched on.

Powertools' Tracer() imports and patches aws_xray_sdk when it is constructed, at a cost of 0.1-0.45 s on every cold
start. These functions are invoked rarely, so most invocations are cold: tracing is opt-in (EnableTracing), and
without it the handler is left as it is.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

Handler = TypeVar("Handler", bound=Callable[..., Any])


def tracing_enabled() -> bool:
    # Powertools' own switch, which template.yaml sets from EnableTracing.
    return os.environ.get("POWERTOOLS_TRACE_DISABLED", "false").strip().lower() not in {"1", "true", "yes", "on"}


def capture_lambda_handler(handler: Handler) -> Handler:
    if not tracing_enabled():
        return handler
    from aws_lambda_powertools import Tracer  # noqa: PLC0415 - deliberately lazy, see the module docstring

    return Tracer().capture_lambda_handler(handler)
