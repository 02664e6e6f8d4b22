"""Doubles for what moto lacks in the operator's commands, each named where a test uses it.

- ``DeployedStacks``: DescribeStacks. moto's CloudFormation needs extras this project does not install, so a
  botocore Stubber answers on the code's own client (``aws.client("cloudformation")``), as in make status's tests.
- ``ManagedInstances``: SSM DescribeInstanceInformation, which moto does not implement.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.stub import Stubber
from moto.core.responses import ActionResult
from moto.ec2.models import ec2_backends
from moto.ssm.responses import SimpleSystemManagerResponse

from eks_prefetch import aws
from testing.environment import ACCOUNT, REGION


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


class ManagedInstances:
    """SSM's DescribeInstanceInformation, which moto does not implement: the managed nodes the test registers, with
    their PingStatus, answered through moto's HTTP path (as harness/agent.py does for the demo), filtered by
    ``tag:<key>`` against the EC2 tags, in pages of 50."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ping: dict[str, str] = {}
        self.requests: list[list[dict[str, Any]]] = []

        def describe_instance_information(response: SimpleSystemManagerResponse) -> ActionResult:
            return self._answer(response)  # moto dispatches to functions of the class, not bound methods

        monkeypatch.setattr(
            SimpleSystemManagerResponse, "describe_instance_information", describe_instance_information, raising=False
        )

    def register(self, instance_id: str, ping_status: str = "Online") -> None:
        self.ping[instance_id] = ping_status

    def _answer(self, response: SimpleSystemManagerResponse) -> ActionResult:
        filters = response._get_param("Filters") or []
        self.requests.append(filters)
        tags_of = {
            instance.id: {tag["key"]: tag["value"] for tag in instance.get_tags()}
            for instance in ec2_backends[ACCOUNT][REGION].all_instances()
        }
        items = []
        for instance_id, ping in self.ping.items():
            tags = tags_of.get(instance_id, {})
            if all(tags.get(f["Key"][4:]) in f["Values"] for f in filters if f["Key"].startswith("tag:")):
                items.append(
                    {
                        "InstanceId": instance_id,
                        "PingStatus": ping,
                        "LastPingDateTime": datetime(2026, 11, 1, 11, 0, tzinfo=UTC),
                        "ResourceType": "EC2Instance",
                    }
                )
        start = int(response._get_param("NextToken") or 0)
        answer: dict[str, Any] = {"InstanceInformationList": items[start : start + 50]}
        if start + 50 < len(items):
            answer["NextToken"] = str(start + 50)
        return ActionResult(answer)
