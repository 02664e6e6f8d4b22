"""CloudFormation and Lambda: a deployed stack's configuration, for the operator's commands."""

from __future__ import annotations

from typing import Any

import boto3

from eks_prefetch.aws import clients


def stack_outputs(stack_name: str, cloudformation: Any = None) -> dict[str, str]:
    (stack,) = (cloudformation or clients.client("cloudformation")).describe_stacks(StackName=stack_name)["Stacks"]
    return {output["OutputKey"]: output["OutputValue"] for output in stack.get("Outputs", [])}


def function_environment(function_name: str, lambda_client: Any = None) -> dict[str, str]:
    configuration = (lambda_client or clients.client("lambda")).get_function_configuration(FunctionName=function_name)
    return dict(configuration.get("Environment", {}).get("Variables", {}))


def current_region() -> str | None:
    """The region boto3 resolves from the environment and the AWS config (for a command run by a person)."""
    return boto3.session.Session().region_name
