"""Test doubles for the moto gaps the status function meets, and helpers to read what it recorded.

moto gaps, and the double for each:
- every moto command is ``Success`` with empty output: ``FakeInvocations`` patches the moto SSM backend's
  ``get_command_invocation`` (the real HTTP path through botocore stays) to answer a chosen Status, StatusDetails
  and stdout per (command, node);
- moto does not implement ``ssm:ListCommandInvocations``: ``FakeInvocations`` also replaces the adapter
  ``aws.ssm.list_command_invocations`` with a listing of the same invocations (its request is tested with a Stubber);
- moto does not implement ``ssm:DescribeInstanceInformation``: ``FakeFleet`` replaces the adapter
  ``aws.ssm.online_managed_nodes`` with the set of nodes the test says are Online (its request: Stubber test).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from moto.ssm.models import ssm_backends

from eks_prefetch import aws
from tests.conftest import ACCOUNT, REGION

STATUS_TABLE = "eks-image-prefetch-status"
REGISTRY = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"


def create_status_table() -> None:
    """The table as template.yaml defines it (pk/sk, TTL on expires_at)."""
    dynamodb = boto3.client("dynamodb")
    dynamodb.create_table(
        TableName=STATUS_TABLE,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    dynamodb.update_time_to_live(
        TableName=STATUS_TABLE, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"}
    )


def image_line(reference: str, status: str, digest: str | None = None, **extra: Any) -> str:
    record = {"image": reference, "status": status, "seconds": extra.pop("seconds", 1.5)}
    if digest:
        record["digest"] = digest
    record.update(extra)
    return json.dumps(record)


def summary_line(**counts: Any) -> str:
    return json.dumps(
        {
            "summary": True,
            "images": sum(counts.get(k, 0) for k in ("pulled", "cached", "skipped", "failed")),
            "disk_used_percent": 40,
            "seconds": 3.2,
            **counts,
        }
    )


@dataclass
class Answer:
    status: str = "Success"
    details: str = "Success"
    stdout: str = ""
    ended: datetime | None = None


@dataclass
class FakeInvocations:
    """Double of SSM's invocation results and of ListCommandInvocations (see the module docstring)."""

    answers: dict[tuple[str, str], Answer] = field(default_factory=dict)
    listed: dict[str, list[str]] = field(default_factory=dict)
    gets: list[tuple[str, str]] = field(default_factory=list)

    def set(self, command_id: str, instance_id: str, answer: Answer) -> None:
        self.answers[(command_id, instance_id)] = answer
        nodes = self.listed.setdefault(command_id, [])
        if instance_id not in nodes:
            nodes.append(instance_id)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeInvocations:
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
        monkeypatch.setattr(aws.ssm, "list_command_invocations", self.list_command_invocations)
        return self

    def list_command_invocations(self, command_id: str, ssm: Any = None) -> Iterator[Mapping[str, Any]]:
        for instance_id in self.listed.get(command_id, []):
            answer = self.answers[(command_id, instance_id)]
            yield {"CommandId": command_id, "InstanceId": instance_id, "Status": answer.status}


@dataclass
class FakeFleet:
    """Double of DescribeInstanceInformation filtered by the node tag and PingStatus=Online."""

    online: set[str] = field(default_factory=set)
    # When a node's agent registered (DescribeInstanceInformation's RegistrationDate); absent: long ago.
    registered: dict[str, datetime] = field(default_factory=dict)
    # A node's (PlatformType, PlatformName); absent: ("Linux", "Amazon Linux").
    platforms: dict[str, tuple[str, str]] = field(default_factory=dict)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeFleet:
        monkeypatch.setattr(aws.ssm, "online_managed_nodes", self.online_managed_nodes)
        return self

    def online_managed_nodes(self, tag_key: str, tag_value: str, ssm: Any = None) -> Iterator[Mapping[str, Any]]:
        for instance_id in sorted(self.online):
            platform_type, platform_name = self.platforms.get(instance_id, ("Linux", "Amazon Linux"))
            info: dict[str, Any] = {
                "InstanceId": instance_id,
                "PingStatus": "Online",
                "PlatformType": platform_type,
                "PlatformName": platform_name,
            }
            if instance_id in self.registered:
                info["RegistrationDate"] = self.registered[instance_id]
            yield info


def status_event(command_id: str, instance_id: str, status: str, document: str, event_id: str = "e-1") -> dict:
    return {
        "version": "0",
        "id": event_id,
        "detail-type": "EC2 Command Invocation Status-change Notification",
        "source": "aws.ssm",
        "account": ACCOUNT,
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": REGION,
        "resources": [f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/{instance_id}"],
        "detail": {
            "command-id": command_id,
            "document-name": document,
            "instance-id": instance_id,
            "requested-date-time": datetime.now(UTC).isoformat(),
            "status": status,
        },
    }


def scheduled_event() -> dict:
    return {
        "version": "0",
        "id": "sweep-1",
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT,
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": REGION,
        "resources": [f"arn:aws:events:{REGION}:{ACCOUNT}:rule/status-sweep"],
        "detail": {},
    }


def emf_documents(stdout: str) -> list[dict[str, Any]]:
    """The CloudWatch EMF documents among the printed lines (log lines are JSON too, without "_aws")."""
    documents = []
    for line in stdout.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict) and "_aws" in value:
            documents.append(value)
    return documents


def emitted(stdout: str) -> list[tuple[str, frozenset[tuple[str, str]], float]]:
    """(metric, {(dimension, value)}, value) for every value of every metric printed as EMF."""
    out = []
    for document in emf_documents(stdout):
        (directive,) = document["_aws"]["CloudWatchMetrics"]
        (dimension_names,) = directive["Dimensions"]
        dimensions = frozenset((name, document[name]) for name in dimension_names)
        for metric in directive["Metrics"]:
            values = document[metric["Name"]]
            for value in values if isinstance(values, list) else [values]:
                out.append((metric["Name"], dimensions, value))
    return out


def total(stdout: str, metric: str, **dimensions: str) -> float:
    wanted = frozenset(dimensions.items())
    return sum(value for name, dims, value in emitted(stdout) if name == metric and dims == wanted)


def values(stdout: str, metric: str, **dimensions: str) -> list[float]:
    wanted = frozenset(dimensions.items())
    return [value for name, dims, value in emitted(stdout) if name == metric and dims == wanted]
