"""Answering an operation of the code's own client at botocore's level, instead of moto.

The answer is given on botocore's ``before-call`` event: after the call was counted (``testing.apicalls``) and its
parameters validated against the service model, so that the code under test, adapters included, runs unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from botocore.awsrequest import AWSResponse

from eks_prefetch import aws


def answer_from(
    service: str, operation: str, answer: Callable[[Mapping[str, Any]], dict[str, Any] | None], name: str
) -> None:
    """Answer an operation of the shared client from ``answer(its parameters)`` instead of moto (None: moto answers).

    botocore hands ``before-call`` the serialized request only, so the parameters are kept from the earlier
    ``before-parameter-build`` event, in the call's context. The latest registration under a name wins."""
    emitter = aws.client(service).meta.events

    def keep(params: Mapping[str, Any], context: dict[str, Any], **_: Any) -> None:
        context[name] = dict(params)

    def respond(context: dict[str, Any], **_: Any) -> tuple[AWSResponse, dict[str, Any]] | None:
        parsed = answer(context[name])
        if parsed is None:
            return None
        return AWSResponse("https://simulated.invalid/", 200, {}, None), {**parsed, "ResponseMetadata": {}}

    # botocore ignores a second registration with the same unique_id: drop the earlier one first.
    emitter.unregister(f"before-parameter-build.{service}.{operation}", unique_id=f"{name}-keep")
    emitter.unregister(f"before-call.{service}.{operation}", unique_id=f"{name}-respond")
    emitter.register(f"before-parameter-build.{service}.{operation}", keep, unique_id=f"{name}-keep")
    emitter.register(f"before-call.{service}.{operation}", respond, unique_id=f"{name}-respond")


def ssm_page(items: list[Any], params: Mapping[str, Any], key: str) -> dict[str, Any]:
    """One page of SSM's answer (at most 50 items, fewer if MaxResults asks), with its token."""
    start = int(params.get("NextToken") or 0)
    size = min(int(params.get("MaxResults") or 50), 50)
    page: dict[str, Any] = {key: items[start : start + size]}
    if start + size < len(items):
        page["NextToken"] = str(start + size)
    return page
