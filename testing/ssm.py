"""Doubles of what moto's SSM lacks, each answering at botocore's level (``testing.answers``) or in moto's backend,
so that the adapters in ``eks_prefetch.aws.ssm`` run unchanged and every call is counted like any other:

- moto does not implement ``ssm:DescribeInstanceInformation``: ``Agents`` answers it, for one instance (is its agent
  Online?) and for the fleet (the Online nodes, in SSM's pages of 50);
- every moto command is ``Success`` with empty output: ``FakeInvocations`` patches the moto SSM backend's
  ``get_command_invocation`` (the real HTTP path through botocore stays) to answer a chosen Status, StatusDetails
  and stdout per (command, node);
  ``skipped_step`` is the answer of a step the agent skipped (a precondition not met on a Windows node);
- moto does not implement ``ssm:ListCommandInvocations``: ``FakeInvocations`` also answers it, with the same
  invocations in SSM's pages of 50;
- ``ManagedInstances`` answers DescribeInstanceInformation through moto's HTTP path with any PingStatus (Online,
  ConnectionLost, Inactive) and the ``tag:`` filter against the EC2 tags, for `make preflight`, which must see the
  nodes that are not Online too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from moto.core.responses import ActionResult
from moto.ec2.models import ec2_backends
from moto.ssm.models import ssm_backends
from moto.ssm.responses import SimpleSystemManagerResponse

from testing.answers import answer_from, ssm_page
from testing.clock import Clock
from testing.environment import ACCOUNT, REGION


@dataclass
class Agents:
    """ssm:DescribeInstanceInformation: which nodes' SSM agents are Online.

    A node is Online if it is in ``online``; or from its ``registered_at`` time on the simulated ``clock``; or, in
    ``online_after``, once it has been asked about that many times without being Online. Asking about nodes by id
    (the InstanceIds filter: the node-launch path) is recorded in ``asked``; listing the fleet (the status path) is
    not, and ignores the tag filter: every node the double knows carries the node tag.
    """

    clock: Clock | None = None
    online: set[str] = field(default_factory=set)
    # When a node's agent registered (DescribeInstanceInformation's RegistrationDate); absent: not said.
    registered: dict[str, datetime] = field(default_factory=dict)
    registered_at: dict[str, float] = field(default_factory=dict)  # on the clock
    online_after: dict[str, int] = field(default_factory=dict)  # node -> number of "not yet" answers before Online
    # A node's (PlatformType, PlatformName); absent: ("Linux", "Amazon Linux").
    platforms: dict[str, tuple[str, str]] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)
    _asks: Counter[str] = field(default_factory=Counter, init=False, repr=False)

    def install(self) -> Agents:
        answer_from("ssm", "DescribeInstanceInformation", self._describe, "agents")
        return self

    def is_online(self, instance_id: str) -> bool:
        if instance_id in self.online:
            return True
        registered_at = self.registered_at.get(instance_id)
        return registered_at is not None and self.clock is not None and registered_at <= self.clock.now

    def ask(self, instance_id: str) -> bool:
        self.asked.append(instance_id)
        self._asks[instance_id] += 1
        pending = self.online_after.get(instance_id)
        if pending is not None and self._asks[instance_id] > pending:
            self.online.add(instance_id)
        return self.is_online(instance_id)

    def online_managed_nodes(self, tag_key: str = "", tag_value: str = "", ssm: Any = None) -> Iterator[dict[str, Any]]:
        """The fleet's listing, with the adapter's signature (a test may stand it in for ``aws.ssm``'s)."""
        for instance_id in sorted(self.online | {node for node in self.registered_at if self.is_online(node)}):
            yield self._info(instance_id)

    def _info(self, instance_id: str) -> dict[str, Any]:
        platform_type, platform_name = self.platforms.get(instance_id, ("Linux", "Amazon Linux"))
        info: dict[str, Any] = {
            "InstanceId": instance_id,
            "PingStatus": "Online",
            "PlatformType": platform_type,
            "PlatformName": platform_name,
        }
        if instance_id in self.registered:
            info["RegistrationDate"] = self.registered[instance_id]
        return info

    def _describe(self, params: Mapping[str, Any]) -> dict[str, Any]:
        filters = {item["Key"]: item["Values"] for item in params.get("Filters") or []}
        if "InstanceIds" in filters:
            nodes = [self._info(node) for node in filters["InstanceIds"] if self.ask(node)]
        else:
            nodes = list(self.online_managed_nodes())
        return ssm_page(nodes, params, "InstanceInformationList")


@dataclass
class Answer:
    status: str = "Success"
    details: str = "Success"
    stdout: str = ""
    ended: datetime | None = None


def skipped_step(step: str = "prefetchImages", *, message: bool = False, ended: datetime | None = None) -> Answer:
    """What SSM reports for an invocation whose only step the agent skipped, which moto cannot tell (it answers
    Success with no output for everything): a node that is not Linux, reached by a push's tag Targets, where the
    step's ``precondition: StringEquals [platformType, Linux]`` is not met. From amazon-ssm-agent's source
    (runpluginutil: the step gets status Skipped, code 0, this message as its Output and no stdout; contracts'
    DocumentResultAggregator: "Skipped is a form of success"): the invocation is Success/Success, with no stdout,
    or, where SSM shows the step's Output as its stdout (``message``), the agent's skip message."""
    stdout = (
        "Step execution skipped due to unsatisfied preconditions: "
        f"'\"StringEquals\": [platformType, Linux]'. Step name: {step}"
        if message
        else ""
    )
    return Answer("Success", "Success", stdout, ended)


@dataclass
class FakeInvocations:
    """SSM's invocation results and ListCommandInvocations (see the module docstring)."""

    answers: dict[tuple[str, str], Answer] = field(default_factory=dict)
    listed: dict[str, list[str]] = field(default_factory=dict)
    gets: list[tuple[str, str]] = field(default_factory=list)

    def set(self, command_id: str, instance_id: str, answer: Answer) -> None:
        self.answers[(command_id, instance_id)] = answer
        nodes = self.listed.setdefault(command_id, [])
        if instance_id not in nodes:
            nodes.append(instance_id)

    def install(self) -> FakeInvocations:
        backend = ssm_backends[ACCOUNT][REGION]
        real = backend.get_command_invocation

        def get_command_invocation(command_id: str, instance_id: str, plugin_name: str | None) -> dict[str, Any]:
            self.gets.append((command_id, instance_id))
            invocation = dict(real(command_id, instance_id, plugin_name))
            answer = self.answers.get((command_id, instance_id))
            if answer is not None:
                invocation.update(
                    Status=answer.status, StatusDetails=answer.details, StandardOutputContent=answer.stdout
                )
                if answer.ended is not None:
                    invocation["ExecutionEndDateTime"] = answer.ended.isoformat()
            return invocation

        # On the backend instance, which moto discards when its mock ends: nothing outlives the test.
        backend.get_command_invocation = get_command_invocation
        answer_from("ssm", "ListCommandInvocations", self._list, "invocations")
        return self

    def _list(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return ssm_page(list(self.list_command_invocations(params.get("CommandId", ""))), params, "CommandInvocations")

    def list_command_invocations(self, command_id: str, ssm: Any = None) -> Iterator[Mapping[str, Any]]:
        """The listing, with the adapter's signature (a test may stand it in for ``aws.ssm``'s)."""
        for instance_id in self.listed.get(command_id, []):
            answer = self.answers[(command_id, instance_id)]
            yield {"CommandId": command_id, "InstanceId": instance_id, "Status": answer.status}


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
