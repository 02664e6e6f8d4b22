"""CloudFormation custom resources (the uninstall's unpin, the warm volumes' uninstall, the configuration check): the
answer CloudFormation expects at a request's pre-signed ResponseURL, as cfn-response builds it, and its delivery."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from eks_prefetch import aws


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


def deliver(url: str, body: Mapping[str, Any]) -> str | None:
    """PUT the answer at the pre-signed URL; why it could not be delivered, or None. Nothing else can be done then:
    CloudFormation gives up after the resource's ServiceTimeout. The URL is pre-signed: never logged."""
    try:
        aws.stack.put_custom_resource_response(url, dict(body))
    except ConnectionError as error:
        return str(error)[:300]
    return None
