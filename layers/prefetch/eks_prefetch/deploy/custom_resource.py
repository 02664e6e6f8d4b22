"""CloudFormation custom resources (the uninstall's unpin, the warm volumes' uninstall, the configuration check): the
answer CloudFormation expects at a request's pre-signed ResponseURL, as cfn-response builds it, and its delivery.

A malformed request is answered too when it carries a usable ResponseURL: an unanswered request holds the stack
operation until the resource's ServiceTimeout."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from pydantic import HttpUrl, TypeAdapter, ValidationError

from eks_prefetch import aws

_HTTP_URL = TypeAdapter(HttpUrl)  # the type of the request model's response_url


class Outcome(Protocol):
    @property
    def status(self) -> str: ...

    @property
    def reason(self) -> str: ...

    @property
    def physical_resource_id(self) -> str: ...


def response_body(
    outcome: Outcome,
    stack_id: str,
    request_id: str,
    logical_resource_id: str,
    data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "Status": outcome.status,
        "Reason": outcome.reason,
        "PhysicalResourceId": outcome.physical_resource_id,
        "StackId": stack_id,
        "RequestId": request_id,
        "LogicalResourceId": logical_resource_id,
        "NoEcho": False,
        "Data": dict(data or {}),
    }


def malformed_resource_id(event: Any, default: str) -> str:
    """The physical id to answer a malformed request with: CloudFormation's, else the logical id, else ``default``."""
    fields = event if isinstance(event, Mapping) else {}
    return str(fields.get("PhysicalResourceId") or fields.get("LogicalResourceId") or default)


def _usable_url(url: Any) -> str | None:
    """The URL as the request model reads it (http or https, percent-encoded), or None if it is none: then urllib
    would raise, with the URL's signature in its message."""
    try:
        return str(_HTTP_URL.validate_python(url))
    except ValidationError:
        return None


def answer(event: Any, outcome: Outcome, data: Mapping[str, Any] | None = None) -> str | None:
    """PUT ``outcome`` at the request's pre-signed ResponseURL, with the ids CloudFormation matches it by, read from
    the raw request (which may be malformed); why it was not delivered, or None. Nothing else can be done then:
    CloudFormation gives up after the resource's ServiceTimeout. The URL is pre-signed: never logged."""
    fields = event if isinstance(event, Mapping) else {}
    url = _usable_url(fields.get("ResponseURL"))
    if url is None:
        return "the request has no usable ResponseURL"
    body = response_body(
        outcome,
        str(fields.get("StackId", "")),
        str(fields.get("RequestId", "")),
        str(fields.get("LogicalResourceId", "")),
        data=data,
    )
    try:
        aws.stack.put_custom_resource_response(url, body)
    except ConnectionError as error:
        return str(error)[:300]
    return None
