"""CloudFormation and Lambda: a deployed stack's configuration, the answer to a custom resource, and the session of
a person's command line."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Mapping
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError

from eks_prefetch.aws import clients

RESPONSE_TIMEOUT_SECONDS = 10
RESPONSE_ATTEMPTS = 3


def stack_outputs(stack_name: str, cloudformation: Any = None) -> dict[str, str]:
    return describe_stack(stack_name, cloudformation)[0]


def function_environment(function_name: str, lambda_client: Any = None) -> dict[str, str]:
    configuration = (lambda_client or clients.client("lambda")).get_function_configuration(FunctionName=function_name)
    return dict(configuration.get("Environment", {}).get("Variables", {}))


def current_region() -> str | None:
    """The region boto3 resolves from the environment and the AWS config (for a command run by a person)."""
    return boto3.session.Session().region_name


def describe_stack(stack_name: str, cloudformation: Any = None) -> tuple[dict[str, str], dict[str, str]]:
    """A deployed stack's outputs and parameters."""
    (stack,) = (cloudformation or clients.client("cloudformation")).describe_stacks(StackName=stack_name)["Stacks"]
    outputs = {output["OutputKey"]: output["OutputValue"] for output in stack.get("Outputs", [])}
    parameters = {
        p["ParameterKey"]: p.get("ResolvedValue", p.get("ParameterValue", "")) for p in stack.get("Parameters", [])
    }
    return outputs, parameters


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


def session_problem() -> str | None:
    """Why no AWS call can be made from this shell (no region, no credentials), in the operator's words, or None.

    Checked before the first call, so the message names the cause rather than the last link of botocore's credential
    chain (the instance metadata lookup, which behind a proxy fails with a proxy error)."""
    session = boto3.Session()
    if not session.region_name:
        return "no region (set REGION=<the stack's region>)"
    try:
        credentials = session.get_credentials()
    except BotoCoreError as error:
        return f"no AWS credentials (the last place looked, failed: {error})"
    if credentials is None:
        return "no AWS credentials: configure them (aws configure, AWS_PROFILE=<profile>, or aws sso login)"
    return None
