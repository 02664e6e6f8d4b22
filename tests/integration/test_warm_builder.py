"""The warm volume builder (statemachines/warm_volume_builder.asl.json) executed by moto's Step Functions, with the
DefinitionSubstitutions template.yaml gives it, against moto's EC2 and SSM.

moto cannot play three steps, so small doubles stand in, named where they are used:
- ``node_outcomes``: moto's GetCommandInvocation answers every command ``Success`` with no output. The double
  answers, per document, the status and output of the builder's steps (the seal step's JSON stamp).
- ``failing_snapshots``: moto's snapshots are ``completed`` at once. The double makes them ``error``.
- ``inherit_source_version`` (testing/warm.py): moto's CreateLaunchTemplateVersion ignores SourceVersion; the double
  inherits the source version's launch parameters, as EC2 does.
- ``delete_launch_template_versions`` (testing/warm.py): moto has no DeleteLaunchTemplateVersions.
- ``refused``: an AWS call refused N times (throttling, a KMS or quota error), at moto's backend.

And one gap of moto's Step Functions is bridged: ``sfn_casing``. AWS takes and returns an aws-sdk integration's
fields in PascalCase whatever the service's own casing; moto hands them to boto3 as written, and boto3's Step
Functions fields are camelCase (stateMachineArn, executions). Only aws-sdk:sfn (the one-build-at-a-time check)
is affected: EC2's and SSM's fields are PascalCase in boto3 too.
"""

from __future__ import annotations

import base64
import itertools
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
import yaml
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models.elastic_block_store import EBSBackend
from moto.ec2.models.launch_templates import LaunchTemplate, LaunchTemplateBackend
from moto.ssm.exceptions import SSMException
from moto.ssm.models import Command, SimpleSystemManagerBackend
from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl

from harness import template as cfn
from harness.routing import routed_events
from testing.environment import emulated_aws
from testing.warm import delete_launch_template_versions, inherit_source_version, sfn_aws_casing

ROOT = Path(__file__).resolve().parents[2]
DEFINITION = ROOT / "statemachines" / "warm_volume_builder.asl.json"
WARM_BOOT_SCRIPT = ROOT / "document" / "warm_boot.sh"
REGION = "us-east-1"
STACK = "eks-image-prefetch"
BUILDER_TAG = "eks-image-prefetch:warm-builder"
SNAPSHOT_TAG = "eks-image-prefetch:warm-snapshot"
# The user's own AMI parameter: moto reserves /aws/ names and holds no EKS ones.
AMI_PARAMETER = "/platform/eks-node-ami"
REGISTRY = "123456789012.dkr.ecr.us-east-1.amazonaws.com"


def _image(repository: str, digest: str) -> dict[str, str]:
    """An item of the execution's input, as the planner gives it: the reference is what the pull is sent."""
    return {"repository": repository, "digest": digest, "reference": f"{REGISTRY}/{repository}:v1@{digest}"}


IMAGES = [_image("ml/trainer", "sha256:" + "a" * 64), _image("ml/inference", "sha256:" + "b" * 64)]
# What the parameter and make status say the snapshot holds: each image by repository and digest.
HELD = [{"repository": image["repository"], "digest": image["digest"]} for image in IMAGES]
STAMP = {"containerd": "v1.7.27", "ami": "", "architecture": "x86_64", "sealedAt": "2026-01-01T00:00:00Z"}
TERMINAL = {"SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"}


@pytest.fixture
def sfn_casing(monkeypatch: pytest.MonkeyPatch) -> None:
    """aws-sdk:sfn fields in AWS's casing (testing/warm.py, see the module's docstring)."""
    sfn_aws_casing(monkeypatch)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, sfn_casing: None) -> Iterator[None]:
    for key, value in {
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }.items():
        monkeypatch.setenv(key, value)
    with emulated_aws(run_state_machines=True):
        yield


class Stack:
    """The WarmVolumes resources the state machine uses, created in moto from template.yaml."""

    def __init__(self) -> None:
        self.ec2 = boto3.client("ec2", region_name=REGION)
        self.ssm = boto3.client("ssm", region_name=REGION)
        self.sfn = boto3.client("stepfunctions", region_name=REGION)
        self._names = itertools.count(1)
        self.ami = self.ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        self.ssm.put_parameter(Name=AMI_PARAMETER, Type="String", Value=self.ami)
        self.subnet = self.ec2.describe_subnets()["Subnets"][0]["SubnetId"]
        self.documents = {
            logical_id: self._document(logical_id)
            for logical_id in ("PrefetchDocument", "WarmPrepareDocument", "WarmPullDocument", "WarmSealDocument")
        }
        values = cfn.parameter_values(WarmVolumes="true", WarmBuilderSubnetId=self.subnet, WarmNodeAmi=AMI_PARAMETER)
        properties = cfn.resource("WarmLaunchTemplate")["Properties"]
        self.launch_template = self.ec2.create_launch_template(
            LaunchTemplateName="warm",
            LaunchTemplateData=_base64(_numbers(cfn.resolve(properties["LaunchTemplateData"], values))),
        )["LaunchTemplate"]["LaunchTemplateId"]
        parameter = cfn.resolve(cfn.resource("WarmSnapshotParameter")["Properties"], values)
        self.ssm.put_parameter(Name=parameter["Name"], Type="String", Value=parameter["Value"])
        self.snapshot_parameter = parameter["Name"]
        # What !Ref of these resources gives (parameter_values holds stand-ins for them).
        values.update(
            {
                **self.documents,
                "WarmLaunchTemplate": self.launch_template,
                "WarmSnapshotParameter": self.snapshot_parameter,
                "CommandOutputLogGroup": "/aws/ssm/eks-image-prefetch/prefetch",
            }
        )
        resolver = cfn.Resolver(values, cfn.DEFAULT_PSEUDO)
        iam = boto3.client("iam", region_name=REGION)
        self.profile = iam.create_instance_profile(InstanceProfileName=f"{STACK}-warm-builder")["InstanceProfile"][
            "Arn"
        ]
        resolver.attributes[("WarmBuilderInstanceProfile", "Arn")] = self.profile
        # The version CloudFormation wrote (created: 1); a stack update that changes the template writes another.
        resolver.attributes[("WarmLaunchTemplate", "LatestVersionNumber")] = "1"
        machine = cfn.resource("WarmVolumeBuilder")["Properties"]
        self.substitutions = {name: str(v) for name, v in resolver.resolve(machine["DefinitionSubstitutions"]).items()}
        # Every loop checks at once: the tests count checks, not seconds.
        self.substitutions["PollSeconds"] = "0"
        self.name = resolver.resolve(machine["Name"])

    def _document(self, logical_id: str) -> str:
        name = f"{STACK}-{logical_id}-ABC123"
        content = cfn.resource(logical_id)["Properties"]["Content"]
        self.ssm.create_document(
            Name=name, Content=yaml.safe_dump(content), DocumentType="Command", DocumentFormat="YAML"
        )
        return name

    def state_machine(self, **substitutions: str) -> str:
        text = DEFINITION.read_text()
        for name, value in {**self.substitutions, **substitutions}.items():
            text = text.replace("${" + name + "}", value)
        assert "${" not in text, "a substitution the template does not give"
        return self.sfn.create_state_machine(
            name=self.name, definition=text, roleArn="arn:aws:iam::123456789012:role/warm-builder"
        )["stateMachineArn"]

    def update_state_machine(self, machine: str, **substitutions: str) -> None:
        """A stack update's new definition of the state machine."""
        text = DEFINITION.read_text()
        for name, value in {**self.substitutions, **substitutions}.items():
            text = text.replace("${" + name + "}", value)
        self.sfn.update_state_machine(stateMachineArn=machine, definition=text)

    def run(self, machine: str, images: list[dict[str, str]] | None = None, timeout: float = 60) -> dict[str, Any]:
        images = IMAGES if images is None else images
        parameters = {"images": [",".join(image["reference"] for image in images)], "pin": ["true"]}
        execution = self.sfn.start_execution(
            stateMachineArn=machine,
            name=f"build-{next(self._names)}",
            input=json.dumps({"images": images, "documentParameters": parameters}),
        )["executionArn"]
        return self.wait(execution, timeout)

    def wait(self, execution: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            described = self.sfn.describe_execution(executionArn=execution)
            if described["status"] in TERMINAL:
                return described
            time.sleep(0.05)
        raise AssertionError(f"execution still {described['status']} after {timeout} s")

    def why(self, execution: dict[str, Any]) -> list[Any]:
        """The states entered and the failures in the execution's history (each cut short), for an assertion's
        message."""
        events = self.sfn.get_execution_history(executionArn=execution["executionArn"])["events"]
        return [
            str(
                {key: value for key, value in event.items() if key.endswith("EventDetails") and "Failed" in key}
                or event.get("stateEnteredEventDetails", {}).get("name")
            )[:500]
            for event in events
            if "Failed" in event["type"] or event["type"].endswith("StateEntered")
        ]

    def error(self, execution: dict[str, Any]) -> dict[str, Any]:
        """The error the states recorded before the execution's Fail state (its Cause says: see it)."""
        events = self.sfn.get_execution_history(executionArn=execution["executionArn"])["events"]
        (entered,) = [event["stateEnteredEventDetails"] for event in events if event["type"] == "FailStateEntered"]
        return json.loads(entered["input"])["error"]

    def request(self, execution: dict[str, Any], action: str) -> dict[str, Any]:
        """The parameters of the execution's one call of this aws-sdk action."""
        events = self.sfn.get_execution_history(executionArn=execution["executionArn"])["events"]
        (scheduled,) = [
            event["taskScheduledEventDetails"]
            for event in events
            if event["type"] == "TaskScheduled" and event["taskScheduledEventDetails"]["resource"] == action
        ]
        return json.loads(scheduled["parameters"])

    def builders(self) -> list[dict[str, Any]]:
        reservations = self.ec2.describe_instances(Filters=[{"Name": f"tag:{BUILDER_TAG}", "Values": [STACK]}])
        return [instance for r in reservations["Reservations"] for instance in r["Instances"]]

    def snapshots(self) -> list[dict[str, Any]]:
        return self.ec2.describe_snapshots(Filters=[{"Name": f"tag:{SNAPSHOT_TAG}", "Values": [STACK]}])["Snapshots"]

    def commands(self) -> list[dict[str, Any]]:
        return sorted(self.ssm.list_commands()["Commands"], key=lambda command: command["RequestedDateTime"])

    def launch_template_versions(self) -> list[dict[str, Any]]:
        versions = self.ec2.describe_launch_template_versions(LaunchTemplateId=self.launch_template)
        return sorted(versions["LaunchTemplateVersions"], key=lambda v: v["VersionNumber"])

    def published(self) -> dict[str, Any]:
        return json.loads(self.ssm.get_parameter(Name=self.snapshot_parameter)["Parameter"]["Value"])


def _numbers(value: Any) -> Any:
    """!Ref of a Number parameter is a string; the API wants the number (CloudFormation converts it)."""
    if isinstance(value, dict):
        return {key: _numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_numbers(item) for item in value]
    return int(value) if isinstance(value, str) and value.isdigit() else value


def _base64(value: Any) -> Any:
    """Fn::Base64, which the harness's resolver leaves as it is, done as CloudFormation does it."""
    if isinstance(value, dict) and set(value) == {"Fn::Base64"}:
        return base64.b64encode(value["Fn::Base64"].encode()).decode()
    if isinstance(value, dict):
        return {key: _base64(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_base64(item) for item in value]
    return value


@pytest.fixture
def retry_waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """moto's Step Functions sleeps each Retry interval; the waits are recorded instead (tests count attempts)."""
    waits: list[float] = []
    monkeypatch.setattr(retrier_decl, "time", SimpleNamespace(sleep=waits.append))
    return waits


@pytest.fixture
def stack(aws: None, monkeypatch: pytest.MonkeyPatch, retry_waits: list[float]) -> Stack:
    inherit_source_version(monkeypatch)
    delete_launch_template_versions(monkeypatch)
    return Stack()


class Refusals:
    """Double for AWS refusing a call (throttling, TooManyUpdates, a KMS or quota error), at moto's backend: after
    ``after`` calls that run, every later call of the method raises (the state machine's retries included)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch
        self.calls: dict[str, int] = {}

    def refuse(self, owner: type, method: str, error: Exception, after: int = 0) -> None:
        original = getattr(owner, method)
        self.calls[method] = 0

        def refusing(backend: Any, *args: Any, **kwargs: Any) -> Any:
            self.calls[method] += 1
            if self.calls[method] > after:
                raise error
            return original(backend, *args, **kwargs)

        self.monkeypatch.setattr(owner, method, refusing)


@pytest.fixture
def refused(monkeypatch: pytest.MonkeyPatch) -> Refusals:
    return Refusals(monkeypatch)


TOO_MANY_UPDATES = SSMException("TooManyUpdates", "There are concurrent updates for the resource")
THROTTLED = EC2ClientError("RequestLimitExceeded", "Request limit exceeded.")


Outcome = tuple[str, str]  # (Status, StandardOutputContent)


def pull_report(statuses: dict[str, str]) -> str:
    """What the pull (the prefetch script) prints: one record per image sent (reference -> status), then a summary."""
    records = [{"image": reference, "status": status, "seconds": 0.1} for reference, status in statuses.items()]
    counts = {status: sum(1 for s in statuses.values() if s == status) for status in ("pulled", "cached", "skipped")}
    summary = {"summary": True, "images": len(statuses), "failed": 0, "omitted": 0, "seconds": 0.2, **counts}
    return "".join(json.dumps(line) + "\n" for line in [*records, summary])


@pytest.fixture
def node_outcomes(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> dict[str, Outcome]:
    """Double for the builder's side of Run Command (moto answers Success with no output): per document name, the
    status and output GetCommandInvocation answers. Defaults: every step succeeds; the pull reports every image it
    was sent pulled; the seal step prints its stamp."""
    outcomes: dict[str, Outcome | None] = {name: ("Success", "") for name in stack.documents.values()}
    outcomes[stack.documents["WarmPullDocument"]] = None  # from the command's own images parameter
    outcomes[stack.documents["WarmSealDocument"]] = ("Success", json.dumps({**STAMP, "ami": stack.ami}))
    original: Callable[..., dict[str, Any]] = Command.invocation_response

    def invocation_response(self: Command, instance_id: str, plugin_name: str) -> dict[str, Any]:
        outcome = outcomes[self.document_name]
        if outcome is None:
            (images,) = self.parameters["images"]
            outcome = ("Success", pull_report(dict.fromkeys(images.split(","), "pulled")))
        status, output = outcome
        return {
            **original(self, instance_id, plugin_name),
            "Status": status,
            "StatusDetails": status,
            "StandardOutputContent": output,
        }

    monkeypatch.setattr(Command, "invocation_response", invocation_response)
    return outcomes  # type: ignore[return-value]


@pytest.fixture
def failing_snapshots(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Double for a snapshot that fails (moto's complete at once)."""
    original = EBSBackend.create_snapshot

    def create_snapshot(self: EBSBackend, *args: Any, **kwargs: Any) -> Any:
        snapshot = original(self, *args, **kwargs)
        snapshot.status = "error"
        return snapshot

    monkeypatch.setattr(EBSBackend, "create_snapshot", create_snapshot)


def _tags(resource: dict[str, Any]) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in resource.get("Tags", [])}


def test_a_build_launches_the_builder_pulls_snapshots_publishes_and_terminates(
    stack: Stack, node_outcomes: dict[str, Outcome]
) -> None:
    result = stack.run(stack.state_machine())

    assert result["status"] == "SUCCEEDED", "\n".join(map(str, stack.why(result)))
    (builder,) = stack.builders()
    assert builder["ImageId"] == stack.ami  # resolved from the AMI parameter
    assert builder["SubnetId"] == stack.subnet
    # moto keeps no instance profile of a terminated instance: the request as the state machine sent it.
    assert stack.request(result, "runInstances")["IamInstanceProfile"] == {"Arn": stack.profile}
    assert builder["MetadataOptions"]["HttpTokens"] == "required"
    assert _tags(builder)[BUILDER_TAG] == STACK
    assert builder["State"]["Name"] == "terminated"

    documents = [command["DocumentName"] for command in stack.commands()]
    assert documents == [
        stack.documents["WarmPrepareDocument"],
        stack.documents["WarmPullDocument"],
        stack.documents["WarmSealDocument"],
    ]
    assert all(command["InstanceIds"] == [builder["InstanceId"]] for command in stack.commands())
    pull = stack.commands()[1]
    assert pull["Parameters"] == {"images": [",".join(image["reference"] for image in IMAGES)], "pin": ["true"]}

    (snapshot,) = stack.snapshots()
    assert snapshot["State"] == "completed"
    # What EC2 needs (this stack's, its AMI, architecture, containerd, build); what it holds is in the parameter.
    assert _tags(snapshot) | {"eks-image-prefetch:build": "-"} == {
        SNAPSHOT_TAG: STACK,
        "eks-image-prefetch:ami": stack.ami,
        "eks-image-prefetch:architecture": "x86_64",
        "eks-image-prefetch:containerd-version": "v1.7.27",
        "eks-image-prefetch:build": "-",
    }

    first, newest = stack.launch_template_versions()
    mapping = newest["LaunchTemplateData"]["BlockDeviceMappings"][0]
    assert mapping["DeviceName"] == "/dev/xvdb"
    assert mapping["Ebs"]["SnapshotId"] == snapshot["SnapshotId"]
    assert mapping["Ebs"]["VolumeInitializationRate"] == 100  # the default: 50 launches at once within 5,000 MiB/s
    assert newest["DefaultVersion"] and not first["DefaultVersion"]
    # Based on the default version, the new one keeps the template's user data: the warm boot part, whole.
    assert stack.request(result, "describeLaunchTemplateVersions")["Versions"] == ["$Default"]
    assert stack.request(result, "createLaunchTemplateVersion")["SourceVersion"] == str(first["VersionNumber"])
    assert newest["LaunchTemplateData"]["UserData"] == first["LaunchTemplateData"]["UserData"]
    user_data = base64.b64decode(newest["LaunchTemplateData"]["UserData"]).decode()
    assert WARM_BOOT_SCRIPT.read_text() in user_data
    assert 'Content-Type: text/x-shellscript; charset="us-ascii"' in user_data

    published = stack.published()
    assert published["snapshotId"] == snapshot["SnapshotId"]
    assert published["amiId"] == stack.ami
    assert published["containerdVersion"] == "v1.7.27"
    assert published["images"] == HELD
    assert published["launchTemplateVersion"] == newest["VersionNumber"]


def test_with_fast_snapshot_restore_the_published_volume_has_no_initialization_rate(
    stack: Stack, node_outcomes: dict[str, Outcome]
) -> None:
    """EC2 initializes a volume created with VolumeInitializationRate at that rate even from an FSR-enabled snapshot:
    with FSR zones named, the published version leaves the rate out, so that nodes get the FSR they pay for."""
    result = stack.run(stack.state_machine(FsrAvailabilityZones="us-east-1a,us-east-1b"))

    assert result["status"] == "SUCCEEDED", "\n".join(map(str, stack.why(result)))
    (snapshot,) = stack.snapshots()
    assert stack.request(result, "enableFastSnapshotRestores")["AvailabilityZones"] == ["us-east-1a", "us-east-1b"]
    _first, newest = stack.launch_template_versions()
    (mapping,) = newest["LaunchTemplateData"]["BlockDeviceMappings"]
    assert mapping["Ebs"]["SnapshotId"] == snapshot["SnapshotId"]
    assert "VolumeInitializationRate" not in mapping["Ebs"]
    assert stack.published()["launchTemplateVersion"] == newest["VersionNumber"]


def test_with_rate_zero_the_published_volume_has_no_initialization_rate(
    stack: Stack, node_outcomes: dict[str, Outcome]
) -> None:
    """0: no provisioned rate: volumes load lazily, with no regional cap on launches at once."""
    result = stack.run(stack.state_machine(VolumeInitializationRate="0"))

    assert result["status"] == "SUCCEEDED", "\n".join(map(str, stack.why(result)))
    _first, newest = stack.launch_template_versions()
    (mapping,) = newest["LaunchTemplateData"]["BlockDeviceMappings"]
    assert mapping["Ebs"]["SnapshotId"] == stack.published()["snapshotId"]
    assert "VolumeInitializationRate" not in mapping["Ebs"]


def test_the_next_build_starts_from_the_previous_snapshot(stack: Stack, node_outcomes: dict[str, Outcome]) -> None:
    machine = stack.state_machine()
    assert stack.run(machine)["status"] == "SUCCEEDED"
    previous = stack.published()["snapshotId"]

    second = stack.run(machine)

    assert second["status"] == "SUCCEEDED"
    (mapping,) = stack.request(second, "runInstances")["BlockDeviceMappings"]
    assert mapping["Ebs"]["SnapshotId"] == previous
    assert stack.published()["snapshotId"] not in {previous, None}
    assert {builder["State"]["Name"] for builder in stack.builders()} == {"terminated"}
    # Based on the first build's version (then the default): the user data goes on from version to version.
    created, built, rebuilt = stack.launch_template_versions()
    assert stack.request(second, "createLaunchTemplateVersion")["SourceVersion"] == str(built["VersionNumber"])
    assert rebuilt["LaunchTemplateData"]["UserData"] == created["LaunchTemplateData"]["UserData"]
    assert (
        rebuilt["LaunchTemplateData"]["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"] == stack.published()["snapshotId"]
    )


def test_after_a_stack_update_of_the_launch_template_the_next_build_carries_the_new_user_data(
    stack: Stack, node_outcomes: dict[str, Outcome]
) -> None:
    """CloudFormation writes a changed WarmLaunchTemplate as a new version and leaves the default where it was (the
    last build's, with the old warm boot part): based on the default, every later build would carry the old user
    data. The first build after such an update bases its version on the stack's; later ones on the default again
    (which keeps what a user added to it)."""
    machine = stack.state_machine()
    assert stack.run(machine)["status"] == "SUCCEEDED"
    new_user_data = base64.b64encode(b"#!/bin/bash\necho a new warm boot part\n").decode()
    written = stack.ec2.create_launch_template_version(
        LaunchTemplateId=stack.launch_template,
        LaunchTemplateData={"UserData": new_user_data, "BlockDeviceMappings": [{"DeviceName": "/dev/xvdb", "Ebs": {}}]},
    )["LaunchTemplateVersion"]["VersionNumber"]
    assert _default_version(stack) == 2  # as CloudFormation leaves it
    stack.update_state_machine(machine, StackLaunchTemplateVersion=str(written))

    after_update = stack.run(machine)
    again = stack.run(machine)

    assert (after_update["status"], again["status"]) == ("SUCCEEDED", "SUCCEEDED")
    assert stack.request(after_update, "createLaunchTemplateVersion")["SourceVersion"] == str(written)
    *_, rebuilt, latest = stack.launch_template_versions()
    assert rebuilt["LaunchTemplateData"]["UserData"] == new_user_data
    assert stack.request(again, "createLaunchTemplateVersion")["SourceVersion"] == str(rebuilt["VersionNumber"])
    assert latest["LaunchTemplateData"]["UserData"] == new_user_data and latest["DefaultVersion"]
    assert stack.published()["stackTemplateVersion"] == str(written)


@pytest.mark.parametrize("step", ["WarmPrepareDocument", "WarmPullDocument", "WarmSealDocument"])
def test_a_failed_step_terminates_the_builder_and_publishes_nothing(
    stack: Stack, node_outcomes: dict[str, Outcome], step: str
) -> None:
    node_outcomes[stack.documents[step]] = ("Failed", "")

    result = stack.run(stack.state_machine())

    assert result["status"] == "FAILED"
    _assert_nothing_published(stack)


def test_a_failed_snapshot_is_deleted_and_the_builder_terminated(
    stack: Stack, node_outcomes: dict[str, Outcome], failing_snapshots: None
) -> None:
    result = stack.run(stack.state_machine())

    assert result["status"] == "FAILED"
    _assert_nothing_published(stack)


def test_a_step_that_never_ends_times_out_terminates_the_builder_and_publishes_nothing(
    stack: Stack, node_outcomes: dict[str, Outcome]
) -> None:
    node_outcomes[stack.documents["WarmPullDocument"]] = ("InProgress", "")

    result = stack.run(stack.state_machine(MaxPolls="3"))

    assert result["status"] == "FAILED"
    _assert_nothing_published(stack)
    assert len(stack.commands()) == 2  # prepare, then the pull that never ended: no seal


def test_a_build_while_another_runs_does_nothing(stack: Stack, node_outcomes: dict[str, Outcome]) -> None:
    # The first build's pull does not end (within a long bound): it is running when the second starts.
    node_outcomes[stack.documents["WarmPullDocument"]] = ("InProgress", "")
    machine = stack.state_machine(MaxPolls="1000000")
    first = stack.sfn.start_execution(
        stateMachineArn=machine, name="first", input=json.dumps({"images": IMAGES, "documentParameters": {}})
    )
    deadline = time.monotonic() + 30
    while len(stack.commands()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)

    try:
        second = stack.run(machine)
    finally:
        stack.sfn.stop_execution(executionArn=first["executionArn"])

    assert second["status"] == "SUCCEEDED"
    assert "SkippedAnotherBuildRunning" in stack.why(second)
    assert len(stack.builders()) == 1  # the first build's only


def test_the_builder_pulls_with_its_own_document_whose_events_never_reach_the_status_function(
    stack: Stack, node_outcomes: dict[str, Outcome]
) -> None:
    """The builder is no cluster node: its pull must never count in the cluster's invocations, node rows or alarms.
    The status function hears of invocations through its rule (and its sweep lists commands) by the cluster's
    document's name: the builder pulls with a document of its own, the same content and script."""
    result = stack.run(stack.state_machine())
    assert result["status"] == "SUCCEEDED", "\n".join(map(str, stack.why(result)))
    (builder,) = stack.builders()
    pull = stack.commands()[1]
    assert pull["DocumentName"] == stack.documents["WarmPullDocument"] != stack.documents["PrefetchDocument"]
    pull_content = cfn.resource("WarmPullDocument")["Properties"]["Content"]
    assert pull_content == cfn.resource("PrefetchDocument")["Properties"]["Content"]

    rule = cfn.resource("StatusFunction")["Properties"]["Events"]["InvocationStatus"]["Properties"]["Pattern"]
    pattern = cfn.resolve(rule, {"PrefetchDocument": stack.documents["PrefetchDocument"]})

    def status_event(document: str, instance: str) -> dict[str, Any]:
        detail = {"command-id": pull["CommandId"], "document-name": document, "instance-id": instance}
        detail |= {"requested-date-time": "2026-01-01T00:00:00Z", "status": "Success"}
        detail_type = "EC2 Command Invocation Status-change Notification"
        return {"source": "aws.ssm", "detail-type": detail_type, "resources": [], "detail": detail}

    routed = routed_events(
        pattern,
        [
            status_event(pull["DocumentName"], builder["InstanceId"]),
            status_event(pattern["detail"]["document-name"][0], "i-0node"),
        ],
    )
    assert [event["detail"]["instance-id"] for event in routed] == ["i-0node"]  # the cluster's own still reach it


def test_fifty_images_and_a_repository_name_of_120_characters_build_and_are_published(
    stack: Stack, node_outcomes: dict[str, Outcome]
) -> None:
    """EC2 allows 50 tags per resource and keys of 128 characters; RepositoryNames allows 256-character names and the
    document 50 images. Whatever the plan, the snapshot's tags fit, and what it holds is in the parameter."""
    long_name = "platform/" + "x" * 111  # 120 characters: as a tag key's suffix, 146 characters
    images = [_image(f"team/app-{n:02d}", f"sha256:{n:064x}") for n in range(49)]
    images.append(_image(long_name, "sha256:" + "c" * 64))

    result = stack.run(stack.state_machine(), images=images)

    assert result["status"] == "SUCCEEDED", "\n".join(map(str, stack.why(result)))
    (snapshot,) = stack.snapshots()
    tags = _tags(snapshot)
    assert len(tags) <= 50 and max(map(len, tags)) <= 128 and max(map(len, tags.values())) <= 256
    published = stack.ssm.get_parameter(Name=stack.snapshot_parameter)["Parameter"]["Value"]
    assert json.loads(published)["images"] == [{"repository": i["repository"], "digest": i["digest"]} for i in images]
    assert len(published.encode()) <= 8192  # an advanced parameter's limit (Intelligent-Tiering)


@pytest.mark.parametrize(
    "seal",
    [
        "containerd stopped",  # not JSON
        "",  # nothing printed
        '["v1.7.27"]',  # JSON, not an object
        '{"ami": "ami-0123456789abcdef0", "architecture": "x86_64"}',  # no containerd version
        '{"containerd": 1.7, "ami": "ami-0123456789abcdef0", "architecture": "x86_64"}',  # not a string
    ],
)
def test_seal_output_that_is_not_the_stamp_terminates_the_builder_and_publishes_nothing(
    stack: Stack, node_outcomes: dict[str, Outcome], seal: str
) -> None:
    """Every path after the launch ends with the builder terminated, runtime errors included: an intrinsic that
    fails in a Pass state, or a path the output lacks, would otherwise end the execution with the builder up."""
    node_outcomes[stack.documents["WarmSealDocument"]] = ("Success", seal)

    result = stack.run(stack.state_machine())

    assert result["status"] == "FAILED"
    _assert_nothing_published(stack)


def test_a_build_publishes_only_what_the_pull_reports_held_and_fails(
    stack: Stack, node_outcomes: dict[str, Outcome]
) -> None:
    """A too small volume (the disk guard skips) or an image of another architecture: the pull exits 0 without it.
    The parameter claims only what the volume holds; the build fails (ExecutionsFailed: WarmBuildFailuresAlarm)
    after publishing it, so that nodes still get what it does hold, and the planner's plan no longer matches."""
    trainer, inference = IMAGES
    report = pull_report({trainer["reference"]: "cached", inference["reference"]: "skipped"})
    node_outcomes[stack.documents["WarmPullDocument"]] = ("Success", report)

    result = stack.run(stack.state_machine())

    assert result["status"] == "FAILED"
    assert result["error"] == "WarmBuild.ImagesMissing"
    assert "ml/inference" in stack.error(result)["Cause"] and "ml/trainer" not in stack.error(result)["Cause"]
    (builder,) = stack.builders()
    assert builder["State"]["Name"] == "terminated"
    (snapshot,) = stack.snapshots()
    published = stack.published()
    assert published["snapshotId"] == snapshot["SnapshotId"]
    assert published["images"] == [{"repository": "ml/trainer", "digest": trainer["digest"]}]
    _first, newest = stack.launch_template_versions()
    assert newest["DefaultVersion"]
    assert newest["LaunchTemplateData"]["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"] == snapshot["SnapshotId"]


@pytest.mark.parametrize(
    "report",
    [
        # A builder the document cannot serve (no containerd socket where it looks): exit 0, nothing touched.
        '{"summary": true, "images": 0, "failed": 0, "omitted": 0, "unsupported": "no socket", "seconds": 0}',
        # Every image skipped (a volume too small for any of them).
        pull_report({image["reference"]: "skipped" for image in IMAGES}),
        # Records of other images only.
        pull_report({"registry.example/other:v1@sha256:" + "d" * 64: "pulled"}),
    ],
)
def test_a_pull_that_holds_none_of_the_plan_publishes_nothing(
    stack: Stack, node_outcomes: dict[str, Outcome], report: str
) -> None:
    node_outcomes[stack.documents["WarmPullDocument"]] = ("Success", report)

    result = stack.run(stack.state_machine())

    assert result["status"] == "FAILED"
    _assert_nothing_published(stack)


@pytest.mark.parametrize("execution_input", [{"documentParameters": {}}, {"images": [], "documentParameters": {}}])
def test_an_input_without_images_launches_nothing(stack: Stack, execution_input: dict[str, Any]) -> None:
    execution = stack.sfn.start_execution(stateMachineArn=stack.state_machine(), input=json.dumps(execution_input))
    described = stack.wait(execution["executionArn"])

    assert (described["status"], described["error"]) == ("FAILED", "WarmBuild.InvalidInput")
    assert stack.builders() == []


def test_a_plan_of_one_image_publishes_a_list_of_one(stack: Stack, node_outcomes: dict[str, Outcome]) -> None:
    """JSONPath's one-element results (a filter, [*]) are lists in AWS and in moto alike."""
    result = stack.run(stack.state_machine(), images=IMAGES[:1])

    assert result["status"] == "SUCCEEDED", "\n".join(map(str, stack.why(result)))
    assert stack.published()["images"] == HELD[:1]


def test_a_record_cut_short_holds_nothing(stack: Stack, node_outcomes: dict[str, Outcome]) -> None:
    """A line of the pull's report that is not one JSON object (cut short by the agent's output limit) is never
    parsed (a failing intrinsic would be a runtime error no Catch catches): the image it was about is not claimed."""
    trainer, inference = IMAGES
    cut = json.dumps({"image": trainer["reference"], "status": "pulled"})[:-12]
    report = pull_report({inference["reference"]: "pulled"}) + cut
    node_outcomes[stack.documents["WarmPullDocument"]] = ("Success", report)

    result = stack.run(stack.state_machine())

    assert result["status"] == "FAILED" and result["error"] == "WarmBuild.ImagesMissing"
    assert stack.published()["images"] == [{"repository": "ml/inference", "digest": inference["digest"]}]
    assert {builder["State"]["Name"] for builder in stack.builders()} == {"terminated"}


# --- Publication is all or nothing (the launch template version, its default, the parameter) --------------------


def _snapshot_ids(stack: Stack) -> set[str]:
    return {snapshot["SnapshotId"] for snapshot in stack.snapshots()}


def _named_snapshots(stack: Stack) -> set[str]:
    """The snapshots some version of the launch template names (the versions EC2 still lists)."""
    return {
        mapping["Ebs"]["SnapshotId"]
        for version in stack.launch_template_versions()
        for mapping in version["LaunchTemplateData"].get("BlockDeviceMappings", [])
        if mapping.get("Ebs", {}).get("SnapshotId")
    }


def _default_version(stack: Stack) -> int:
    (default,) = [v["VersionNumber"] for v in stack.launch_template_versions() if v["DefaultVersion"]]
    return int(default)


def test_a_refused_parameter_restores_the_default_removes_the_new_version_and_deletes_no_named_snapshot(
    stack: Stack, node_outcomes: dict[str, Outcome], refused: Refusals
) -> None:
    """PutParameter refused after the new version was made the default: nodes launched from $Default must not get a
    snapshot the failure path then deletes (InvalidSnapshot.NotFound)."""
    machine = stack.state_machine()
    assert stack.run(machine)["status"] == "SUCCEEDED"
    first = stack.published()
    refused.refuse(SimpleSystemManagerBackend, "put_parameter", TOO_MANY_UPDATES)

    result = stack.run(machine)

    assert result["status"] == "FAILED"
    assert _default_version(stack) == first["launchTemplateVersion"]  # restored
    assert [v["VersionNumber"] for v in stack.launch_template_versions()] == [1, first["launchTemplateVersion"]]
    assert stack.published() == first
    assert _snapshot_ids(stack) == {first["snapshotId"]} == _named_snapshots(stack)
    assert {builder["State"]["Name"] for builder in stack.builders()} == {"terminated"}


@pytest.mark.parametrize("earlier_build", [False, True])
def test_a_refused_default_change_removes_the_new_version_and_its_snapshot(
    stack: Stack, node_outcomes: dict[str, Outcome], refused: Refusals, earlier_build: bool
) -> None:
    machine = stack.state_machine()
    if earlier_build:
        assert stack.run(machine)["status"] == "SUCCEEDED"
    before = (stack.published(), _default_version(stack), _snapshot_ids(stack))
    refused.refuse(LaunchTemplateBackend, "modify_launch_template", THROTTLED)

    result = stack.run(machine)

    assert result["status"] == "FAILED"
    assert (stack.published(), _default_version(stack), _snapshot_ids(stack)) == before
    assert len(stack.launch_template_versions()) == 1 + earlier_build  # the new one removed
    assert _named_snapshots(stack) <= _snapshot_ids(stack)


def test_a_refused_version_creation_keeps_the_snapshot_a_lost_answer_may_have_named(
    stack: Stack, node_outcomes: dict[str, Outcome], refused: Refusals
) -> None:
    """CreateLaunchTemplateVersion failing after its retries may still have created the version (an answer lost on
    the way back): its snapshot is kept, for retention to delete once no version names it; the default is unchanged."""
    refused.refuse(LaunchTemplate, "create_version", THROTTLED)

    result = stack.run(stack.state_machine())

    assert result["status"] == "FAILED"
    assert _default_version(stack) == 1 and len(stack.launch_template_versions()) == 1
    assert len(_snapshot_ids(stack)) == 1
    assert stack.published() == {}


def test_when_the_new_version_cannot_be_removed_the_snapshot_it_names_is_kept(
    stack: Stack, node_outcomes: dict[str, Outcome], refused: Refusals, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default restored, but DeleteLaunchTemplateVersions refused: a version still names the new snapshot (a
    node group may launch it), so it stays; retention deletes it once no version names it."""
    refused.refuse(SimpleSystemManagerBackend, "put_parameter", TOO_MANY_UPDATES)
    monkeypatch.delattr("moto.ec2.responses.launch_templates.LaunchTemplates.delete_launch_template_versions")

    result = stack.run(stack.state_machine())

    assert result["status"] == "FAILED"
    assert _default_version(stack) == 1
    assert _named_snapshots(stack) == _snapshot_ids(stack) != set()
    assert stack.published() == {}
    assert {builder["State"]["Name"] for builder in stack.builders()} == {"terminated"}


def test_when_the_default_cannot_be_restored_the_snapshot_it_names_is_kept(
    stack: Stack, node_outcomes: dict[str, Outcome], refused: Refusals
) -> None:
    """PutParameter refused, then ModifyLaunchTemplate refused too (the new version stays the default): the snapshot
    nodes now launch with is never deleted."""
    machine = stack.state_machine()
    assert stack.run(machine)["status"] == "SUCCEEDED"
    refused.refuse(SimpleSystemManagerBackend, "put_parameter", TOO_MANY_UPDATES)
    # Making the new version the default succeeds; restoring the previous one is refused.
    refused.refuse(LaunchTemplateBackend, "modify_launch_template", THROTTLED, after=1)

    result = stack.run(machine)

    assert result["status"] == "FAILED"
    newest = stack.launch_template_versions()[-1]
    assert newest["DefaultVersion"]
    (mapping,) = newest["LaunchTemplateData"]["BlockDeviceMappings"]
    assert mapping["Ebs"]["SnapshotId"] in _snapshot_ids(stack)


def _assert_nothing_published(stack: Stack) -> None:
    (builder,) = stack.builders()
    assert builder["State"]["Name"] == "terminated"
    assert stack.snapshots() == []
    assert len(stack.launch_template_versions()) == 1
    assert stack.published() == {}
