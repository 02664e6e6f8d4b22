"""Adapters for the operator's features (uninstall, preflight): boto3 and the CloudFormation response, nothing else.

Kept apart from ``aws.py`` while that module is reorganised; clients come from ``aws.client`` (one retry policy).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Mapping
from typing import Any

from eks_prefetch import aws

RESPONSE_TIMEOUT_SECONDS = 10
RESPONSE_ATTEMPTS = 3


def put_custom_resource_response(url: str, body: Mapping[str, Any], attempts: int = RESPONSE_ATTEMPTS) -> int:
    """PUT the answer to a custom resource request to its pre-signed URL (as cfn-response does); the HTTP status.
    Retried a few times: an answer that never arrives holds the stack operation until ServiceTimeout."""
    data = json.dumps(body).encode()
    last: Exception | None = None
    for _ in range(attempts):
        # The pre-signed S3 URL is signed for an empty content type.
        request = urllib.request.Request(  # noqa: S310 - the URL is CloudFormation's https pre-signed URL
            url, data=data, method="PUT", headers={"Content-Type": "", "Content-Length": str(len(data))}
        )
        try:
            with urllib.request.urlopen(request, timeout=RESPONSE_TIMEOUT_SECONDS) as response:  # noqa: S310
                return int(response.status)
        except OSError as error:
            last = error
    raise ConnectionError(f"custom resource response not delivered after {attempts} attempts: {last}")


def describe_stack(stack_name: str, cloudformation: Any = None) -> tuple[dict[str, str], dict[str, str]]:
    """A deployed stack's outputs and parameters."""
    (stack,) = (cloudformation or aws.client("cloudformation")).describe_stacks(StackName=stack_name)["Stacks"]
    outputs = {output["OutputKey"]: output["OutputValue"] for output in stack.get("Outputs", [])}
    parameters = {
        p["ParameterKey"]: p.get("ResolvedValue", p.get("ParameterValue", "")) for p in stack.get("Parameters", [])
    }
    return outputs, parameters
