"""The warm planner's side of a WarmVolumes stack in moto, and the double for what moto's EC2 lacks.

- ``WarmStack``: the AMI parameter, the snapshot parameter, the launch template, the builder state machine (moto does
  not execute it here: an execution stays RUNNING until the test ends it, as a build in progress does) and the
  planner's environment.
- ``FastSnapshotRestores``: moto has no fast snapshot restore (Describe/DisableFastSnapshotRestores); the double
  keeps the state per snapshot and zone and answers both.
- ``delete_launch_template_versions``: moto has no DeleteLaunchTemplateVersions either (the builder's rollback and
  the planner's pruning call it): the double deletes the versions as EC2 does (never the default one), and
  DescribeLaunchTemplateVersions no longer lists them.
- ``inherit_source_version``: moto's CreateLaunchTemplateVersion ignores SourceVersion; the double gives the new version
  the source's data, with the request's own top-level members in place of the source's, as EC2 documents it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import boto3
from moto.core.responses import ActionResult
from moto.ec2.models import ec2_backends
from moto.ec2.models.launch_templates import LaunchTemplateBackend
from moto.ec2.responses.launch_templates import LaunchTemplates
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_aws_sdk import (
    StateTaskServiceAwsSdk,
)

from testing.answers import answer_from
from testing.environment import ACCOUNT, REGION, STATUS_TABLE

STACK = "eks-image-prefetch"
BUILDER_TAG = "eks-image-prefetch:warm-builder"
SNAPSHOT_TAG = "eks-image-prefetch:warm-snapshot"
BUILD_TAG = "eks-image-prefetch:build"
# The user's own AMI parameter: moto reserves /aws/ names and holds no EKS ones.
AMI_PARAMETER = "/platform/eks-node-ami"
SNAPSHOT_PARAMETER = f"/eks-image-prefetch/{STACK}/warm-snapshot"
DEVICE = "/dev/xvdb"


class WarmStack:
    def __init__(self) -> None:
        self.ec2 = boto3.client("ec2")
        self.ssm = boto3.client("ssm")
        self.sfn = boto3.client("stepfunctions")
        # From moto's backend: DescribeImages of its thousands of public AMIs takes seconds.
        amis = ec2_backends[ACCOUNT][REGION].amis.values()
        self.amd64_ami = next(ami.id for ami in amis if ami.architecture == "x86_64")
        self.arm64_ami = next(ami.id for ami in amis if ami.architecture == "arm64")
        self.ssm.put_parameter(Name=AMI_PARAMETER, Type="String", Value=self.amd64_ami)
        self.ssm.put_parameter(Name=SNAPSHOT_PARAMETER, Type="String", Value="{}")
        self.launch_template = self.ec2.create_launch_template(
            LaunchTemplateName="warm",
            LaunchTemplateData={"BlockDeviceMappings": [{"DeviceName": DEVICE, "Ebs": {"VolumeSize": 100}}]},
        )["LaunchTemplate"]["LaunchTemplateId"]
        self.state_machine = self.sfn.create_state_machine(
            name=f"{STACK}-warm-volume-builder",
            definition=json.dumps({"StartAt": "Built", "States": {"Built": {"Type": "Succeed"}}}),
            roleArn="arn:aws:iam::123456789012:role/warm-builder",
        )["stateMachineArn"]
        self.zone = self.ec2.describe_availability_zones()["AvailabilityZones"][0]["ZoneName"]

    def environment(self) -> dict[str, str]:
        """What template.yaml gives WarmPlannerFunction beyond the Globals."""
        return {
            "STATUS_TABLE": STATUS_TABLE,
            "WARM_STACK_NAME": STACK,
            "WARM_STATE_MACHINE_ARN": self.state_machine,
            "WARM_NODE_AMI": AMI_PARAMETER,
            "WARM_SNAPSHOT_PARAMETER": SNAPSHOT_PARAMETER,
            "WARM_LAUNCH_TEMPLATE_ID": self.launch_template,
            "WARM_LAUNCH_TEMPLATE_VERSION": "1",
            "WARM_SNAPSHOTS_TO_KEEP": "2",
            "WARM_BUILD_DEBOUNCE_MINUTES": "180",
            "WARM_BUILD_MAX_SECONDS": "43200",
        }

    # --- builds ---

    def executions(self, status: str | None = None) -> list[dict[str, Any]]:
        kwargs = {"statusFilter": status} if status else {}
        executions = self.sfn.list_executions(stateMachineArn=self.state_machine, **kwargs)["executions"]
        return sorted(executions, key=lambda execution: execution["startDate"])

    def execution_input(self, execution: Mapping[str, Any]) -> dict[str, Any]:
        return json.loads(self.sfn.describe_execution(executionArn=execution["executionArn"])["input"])

    def finish(self, execution: Mapping[str, Any], *, publish: bool = True) -> str | None:
        """End a running build as the builder would: publish a snapshot of its input (or fail: publish nothing)."""
        self.sfn.stop_execution(executionArn=execution["executionArn"])
        if not publish:
            return None
        built = self.execution_input(execution)
        ami = self.ssm.get_parameter(Name=AMI_PARAMETER)["Parameter"]["Value"]
        snapshot = self.snapshot(build=execution["name"])
        version = self.use_in_launch_template(snapshot)
        held = [{"repository": image["repository"], "digest": image["digest"]} for image in built["images"]]
        self.publish(snapshot, ami, held, launch_template_version=version, build=execution["name"])
        return snapshot

    def publish(
        self,
        snapshot: str,
        ami: str,
        images: Iterable[Mapping[str, str]],
        *,
        launch_template_version: int = 2,
        build: str = "test",
        stack_template_version: str = "1",
    ) -> None:
        """What the builder's DescribePublished state writes (builtAt as Step Functions' EnteredTime: now;
        stackTemplateVersion: the launch template version CloudFormation had last written)."""
        value = {
            "snapshotId": snapshot,
            "amiId": ami,
            "architecture": "x86_64",
            "containerdVersion": "1.7.27",
            "images": list(images),
            "launchTemplateVersion": launch_template_version,
            "stackTemplateVersion": stack_template_version,
            "builtAt": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            "build": build,
        }
        self.ssm.put_parameter(Name=SNAPSHOT_PARAMETER, Type="String", Value=json.dumps(value), Overwrite=True)

    def published(self) -> dict[str, Any]:
        return json.loads(self.ssm.get_parameter(Name=SNAPSHOT_PARAMETER)["Parameter"]["Value"])

    # --- snapshots and the launch template ---

    def snapshot(self, *, stack: str = STACK, build: str = "test") -> str:
        """A completed snapshot tagged as the builder tags its own (moto completes snapshots at once, stamped now)."""
        volume = self.ec2.create_volume(AvailabilityZone=self.zone, Size=8)["VolumeId"]
        return self.ec2.create_snapshot(
            VolumeId=volume,
            TagSpecifications=[
                {
                    "ResourceType": "snapshot",
                    "Tags": [{"Key": SNAPSHOT_TAG, "Value": stack}, {"Key": BUILD_TAG, "Value": build}],
                }
            ],
        )["SnapshotId"]

    def snapshots(self) -> set[str]:
        """Every warm snapshot, of any stack (moto's AMIs have snapshots of their own)."""
        described = self.ec2.describe_snapshots(Filters=[{"Name": "tag-key", "Values": [SNAPSHOT_TAG]}])["Snapshots"]
        return {snapshot["SnapshotId"] for snapshot in described}

    def use_in_launch_template(self, snapshot: str, *, default: bool = False, template: str | None = None) -> int:
        """A new launch template version whose data volume comes from the snapshot, described as the builder describes
        its own (``default``: made the default, as the builder does). ``template``: another launch template of the
        account (a user's own, a node group's copy, Karpenter's), with no such description."""
        version = self.ec2.create_launch_template_version(
            LaunchTemplateId=template or self.launch_template,
            VersionDescription="" if template else f"warm snapshot {snapshot} of {self.amd64_ami}",
            LaunchTemplateData={"BlockDeviceMappings": [{"DeviceName": DEVICE, "Ebs": {"SnapshotId": snapshot}}]},
        )["LaunchTemplateVersion"]["VersionNumber"]
        if default:
            self.ec2.modify_launch_template(
                LaunchTemplateId=template or self.launch_template, DefaultVersion=str(version)
            )
        return int(version)

    def launch_template_versions(self) -> set[int]:
        """The numbers of WarmLaunchTemplate's versions EC2 lists."""
        versions = self.ec2.describe_launch_template_versions(LaunchTemplateId=self.launch_template, MaxResults=200)
        return {int(version["VersionNumber"]) for version in versions["LaunchTemplateVersions"]}

    # --- builders ---

    def builder(self, *, build: str, stack: str = STACK) -> str:
        """A builder instance as the state machine launches one (its launch time is now: travel to set it)."""
        tags = [{"Key": BUILDER_TAG, "Value": stack}, {"Key": BUILD_TAG, "Value": build}]
        (instance,) = self.ec2.run_instances(
            ImageId=self.amd64_ami,
            MinCount=1,
            MaxCount=1,
            TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
        )["Instances"]
        return str(instance["InstanceId"])

    def state_of(self, instance_id: str) -> str:
        (reservation,) = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        return str(reservation["Instances"][0]["State"]["Name"])


class FastSnapshotRestores:
    """Double for fast snapshot restore, which moto lacks: ``enable`` sets it on as the builder does; the code's
    DescribeFastSnapshotRestores and DisableFastSnapshotRestores are answered from this state."""

    def __init__(self) -> None:
        self.state: dict[tuple[str, str], str] = {}
        self.disabled_calls: list[tuple[str, tuple[str, ...]]] = []

    def install(self) -> FastSnapshotRestores:
        answer_from("ec2", "DescribeFastSnapshotRestores", self._describe, "fsr-describe")
        answer_from("ec2", "DisableFastSnapshotRestores", self._disable, "fsr-disable")
        return self

    def enable(self, snapshot: str, *zones: str) -> None:
        for zone in zones:
            self.state[(snapshot, zone)] = "enabled"

    def zones(self, snapshot: str) -> set[str]:
        """The zones where it is on (billed) for the snapshot."""
        return {zone for (sid, zone), state in self.state.items() if sid == snapshot and state == "enabled"}

    def _describe(self, params: Mapping[str, Any]) -> dict[str, Any]:
        filters = {f["Name"]: set(f["Values"]) for f in params.get("Filters", [])}
        restores = [
            {"SnapshotId": snapshot, "AvailabilityZone": zone, "State": state, "OwnerId": "123456789012"}
            for (snapshot, zone), state in sorted(self.state.items())
            if snapshot in filters.get("snapshot-id", {snapshot}) and state in filters.get("state", {state})
        ]
        return {"FastSnapshotRestores": restores}

    def _disable(self, params: Mapping[str, Any]) -> dict[str, Any]:
        successful = []
        for snapshot in params["SourceSnapshotIds"]:
            self.disabled_calls.append((snapshot, tuple(params["AvailabilityZones"])))
            for zone in params["AvailabilityZones"]:
                if (snapshot, zone) in self.state:
                    self.state[(snapshot, zone)] = "disabling"
                    successful.append({"SnapshotId": snapshot, "AvailabilityZone": zone, "State": "disabling"})
        return {"Successful": successful, "Unsuccessful": []}


def inherit_source_version(monkeypatch: Any) -> None:
    """Double: CreateLaunchTemplateVersion with SourceVersion inherits the source version's launch parameters; those the
    request gives replace the source's (EC2's documented behaviour; moto keeps only the request's)."""
    original = LaunchTemplates.create_launch_template_version

    def create_launch_template_version(self: LaunchTemplates) -> Any:
        result = original(self)
        source = self._get_param("SourceVersion")
        if source:
            template = self.ec2_backend.get_launch_template(self._get_param("LaunchTemplateId"))
            created = template.versions[-1]
            merged = {**copy.deepcopy(template.get_version(source).data), **created.data}
            # The response holds the same dict: it answers the merged data too.
            created.data.clear()
            created.data.update(merged)
        return result

    monkeypatch.setattr(LaunchTemplates, "create_launch_template_version", create_launch_template_version)


def sfn_aws_casing(monkeypatch: Any) -> None:
    """Bridge: aws-sdk:sfn fields in AWS's casing. AWS takes and returns an aws-sdk integration's fields in PascalCase
    whatever the service's own casing; moto hands them to boto3 as written, and boto3's Step Functions fields are
    camelCase (stateMachineArn, executions). Only aws-sdk:sfn (the builder's one-build-at-a-time check) is affected:
    EC2's and SSM's fields are PascalCase in boto3 too."""

    def parameters(self: StateTaskServiceAwsSdk, parameters: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        if self.resource.api_name == "sfn":
            for key in list(parameters):
                parameters[key[0].lower() + key[1:]] = parameters.pop(key)

    def response(self: StateTaskServiceAwsSdk, answer: Any, *args: Any, **kwargs: Any) -> None:
        if self.resource.api_name == "sfn" and isinstance(answer, dict):
            for key in list(answer):
                answer[key[0].upper() + key[1:]] = answer.pop(key)

    monkeypatch.setattr(StateTaskServiceAwsSdk, "_normalise_parameters", parameters)
    monkeypatch.setattr(StateTaskServiceAwsSdk, "_normalise_response", response)


def delete_launch_template_versions(monkeypatch: Any) -> None:
    """Double: DeleteLaunchTemplateVersions, which moto lacks. The default version is refused (EC2 never deletes it;
    the code is the API's generic one), others are deleted: DescribeLaunchTemplateVersions lists them no more. moto
    numbers versions by their place in a list, so a deleted one stays there, marked."""

    def delete(self: LaunchTemplates) -> ActionResult:
        template = self.ec2_backend.get_launch_template(self._get_param("LaunchTemplateId"))
        deleted, refused = [], []
        for number in self._get_param("Versions", []):
            version = template.get_version(number)
            entry = {
                "LaunchTemplateId": template.id,
                "LaunchTemplateName": template.name,
                "VersionNumber": version.number,
            }
            if template.is_default(version) or getattr(version, "deleted", False):
                code = "unexpectedError" if template.is_default(version) else "launchTemplateVersionDoesNotExist"
                refused.append({**entry, "ResponseError": {"Code": code, "Message": "not deleted"}})
            else:
                version.deleted = True
                deleted.append(entry)
        return ActionResult(
            {
                "SuccessfullyDeletedLaunchTemplateVersions": deleted,
                "UnsuccessfullyDeletedLaunchTemplateVersions": refused,
            }
        )

    original = LaunchTemplateBackend.describe_launch_template_versions

    def describe(self: LaunchTemplateBackend, *args: Any, **kwargs: Any) -> Any:
        return [
            (template, version)
            for template, version in original(self, *args, **kwargs)
            if not getattr(version, "deleted", False)
        ]

    monkeypatch.setattr(LaunchTemplates, "delete_launch_template_versions", delete, raising=False)
    monkeypatch.setattr(LaunchTemplateBackend, "describe_launch_template_versions", describe)
