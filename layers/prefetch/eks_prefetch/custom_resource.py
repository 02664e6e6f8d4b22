"""CloudFormation custom resources (the uninstall's unpin, the configuration check): the answer CloudFormation
expects at a request's pre-signed ResponseURL, as cfn-response builds it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal


def response_body(
    *,
    status: Literal["SUCCESS", "FAILED"],
    reason: str,
    physical_resource_id: str,
    stack_id: str,
    request_id: str,
    logical_resource_id: str,
    data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "Status": status,
        "Reason": reason,
        "PhysicalResourceId": physical_resource_id,
        "StackId": stack_id,
        "RequestId": request_id,
        "LogicalResourceId": logical_resource_id,
        "NoEcho": False,
        "Data": dict(data or {}),
    }
