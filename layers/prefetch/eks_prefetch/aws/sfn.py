"""Step Functions: the warm volume builder's executions."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from botocore.exceptions import ClientError

from eks_prefetch.aws import clients
from eks_prefetch.aws.clients import error_code


def running_executions(state_machine_arn: str, sfn: Any = None) -> list[Mapping[str, Any]]:
    """The state machine's executions that are RUNNING (name, executionArn, startDate)."""
    paginator = (sfn or clients.client("stepfunctions")).get_paginator("list_executions")
    pages = paginator.paginate(stateMachineArn=state_machine_arn, statusFilter="RUNNING")
    return [execution for page in pages for execution in page["executions"]]


def start_execution(
    state_machine_arn: str, name: str, execution_input: Mapping[str, Any], sfn: Any = None
) -> str | None:
    """Start an execution and return its ARN; None if one of that name already exists with another input (a
    concurrent planner started it). The same name and input while it runs returns the running one (AWS's own
    idempotency), so a retried start never makes a second build."""
    try:
        response = (sfn or clients.client("stepfunctions")).start_execution(
            stateMachineArn=state_machine_arn, name=name, input=json.dumps(execution_input, sort_keys=True)
        )
    except ClientError as error:
        if error_code(error) == "ExecutionAlreadyExists":
            return None
        raise
    return str(response["executionArn"])


def stop_execution(execution_arn: str, cause: str, sfn: Any = None) -> None:
    """Stop a running execution (ABORTED); one that has already ended is left as it is."""
    try:
        (sfn or clients.client("stepfunctions")).stop_execution(executionArn=execution_arn, cause=cause[:32768])
    except ClientError as error:
        if error_code(error) != "ExecutionDoesNotExist":
            raise
