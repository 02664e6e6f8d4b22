"""CloudFormation's DescribeStacks for the operator's commands: moto's CloudFormation needs extras this project does
not install, so a botocore Stubber answers on the code's own client (``aws.client("cloudformation")``)."""

from __future__ import annotations

from datetime import UTC, datetime

from botocore.stub import Stubber

from eks_prefetch import aws


class DeployedStacks:
    """DescribeStacks answered by a Stubber: stacks with their outputs and parameters, or no such stack."""

    def __init__(self) -> None:
        self.stubber = Stubber(aws.client("cloudformation"))
        self.stubber.activate()

    def exists(self, name: str, outputs: dict[str, str], parameters: dict[str, str] | None = None) -> None:
        stack = {
            "StackName": name,
            "CreationTime": datetime(2026, 11, 1, tzinfo=UTC),
            "StackStatus": "UPDATE_COMPLETE",
            "Outputs": [{"OutputKey": key, "OutputValue": value} for key, value in outputs.items()],
            "Parameters": [{"ParameterKey": key, "ParameterValue": value} for key, value in (parameters or {}).items()],
        }
        self.stubber.add_response("describe_stacks", {"Stacks": [stack]}, {"StackName": name})

    def missing(self, name: str) -> None:
        self.stubber.add_client_error(
            "describe_stacks",
            service_error_code="ValidationError",
            service_message=f"Stack with id {name} does not exist",
            http_status_code=400,
            expected_params={"StackName": name},
        )
