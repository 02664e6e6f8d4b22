"""WarmVolumes is opt-in: off, the stack has no builder and no EC2 write permission; on, the builder's wiring and its
least privilege hold."""

from __future__ import annotations

import email
import json
import re
from pathlib import Path
from typing import Any

import pytest

from document import generate
from eks_prefetch.settings import PlannerSettings
from harness import template as cfn

ROOT = Path(__file__).resolve().parents[2]
DEFINITION = ROOT / "statemachines" / "warm_volume_builder.asl.json"
WARM_TYPES = {"AWS::Serverless::StateMachine", "AWS::EC2::LaunchTemplate", "AWS::IAM::InstanceProfile"}
# The builder's waits, each a bounded loop of PollSeconds x MaxPolls, and how often each can run in one build.
BOUNDED_WAITS = {"WaitForBuilder": 1, "WaitForCommand": 3, "WaitForSnapshot": 1}


def _resources(warm: str) -> dict[str, dict[str, Any]]:
    """The resources CloudFormation creates with WarmVolumes=warm (conditions resolved by the harness's Resolver)."""
    resolver = cfn.Resolver(cfn.parameter_values(WarmVolumes=warm, WarmBuilderSubnetId="subnet-0123456789abcdef0"), {})
    return {
        logical_id: resource
        for logical_id, resource in cfn.template()["Resources"].items()
        if "Condition" not in resource or resolver.condition(resource["Condition"])
    }


def _actions(resource: dict[str, Any]) -> list[str]:
    """Every IAM action a resource's inline or managed policies name (as text: some policies are !Sub strings)."""
    properties = resource.get("Properties", {})
    text = json.dumps([properties.get("Policies"), properties.get("PolicyDocument")])
    return re.findall(r"\b[a-z0-9-]+:[A-Za-z*]+(?=\\?\")", text)


# EBS caps the provisioned initialization rate per Region, summed over the volumes initializing at once; a creation
# over the cap fails (EBS user guide, "Initialize Amazon EBS volumes", Quotas).
REGIONAL_INITIALIZATION_MIB_PER_SECOND = 5000
# Launches at once the default must let through (a Karpenter scale-out of 50 GPU nodes).
BURST = 50


def test_with_the_default_rate_a_burst_of_fifty_launches_fits_the_regional_quota() -> None:
    parameter = cfn.template()["Parameters"]["WarmVolumeInitializationRate"]
    rate = int(parameter["Default"])
    assert rate == 0 or BURST * rate <= REGIONAL_INITIALIZATION_MIB_PER_SECOND
    # The description gives the arithmetic: launches at once = 5,000 / rate, and what 0 (no rate) means.
    description = " ".join(parameter["Description"].split())
    assert "5,000 MiB/s" in description and "5,000 / rate" in description and "0:" in description


@pytest.mark.parametrize(
    ("value", "allowed"), [("0", True), ("100", True), ("300", True), ("50", False), ("301", False)]
)
def test_the_rate_is_none_or_what_ebs_accepts(value: str, allowed: bool) -> None:
    """0: no provisioned rate (the volume loads lazily, or with FSR where zones are named); else 100-300 MiB/s."""
    parameter = cfn.template()["Parameters"]["WarmVolumeInitializationRate"]
    assert bool(re.fullmatch(parameter["AllowedPattern"], value)) is allowed


def test_the_dashboard_shows_how_close_a_burst_came_to_the_regional_quota() -> None:
    dashboard = json.dumps(_resources("true")["PrefetchDashboard"]["Properties"]["DashboardBody"])
    assert "${WarmVolumeInitializationRate}" in dashboard
    assert str(REGIONAL_INITIALIZATION_MIB_PER_SECOND) in dashboard


def test_warm_volumes_default_off() -> None:
    assert cfn.template()["Parameters"]["WarmVolumes"]["Default"] == "false"


def test_the_action_finder_reads_inline_and_substituted_policies() -> None:
    assert "ssm:SendCommand" in _actions(cfn.resource("SendPrefetchCommandPolicy"))  # a !Sub JSON string
    assert "ec2:RunInstances" in _actions(cfn.resource("WarmVolumeBuilder"))


def test_off_there_is_no_builder_and_no_ec2_write_permission() -> None:
    resources = _resources("false")

    assert not [r for r in resources.values() if r["Type"] in WARM_TYPES]
    assert not [logical_id for logical_id in resources if logical_id.startswith("Warm")]
    writes = [
        (logical_id, action)
        for logical_id, resource in resources.items()
        for action in _actions(resource)
        if action.startswith("ec2:") and not action.startswith(("ec2:Describe", "ec2:Get"))
    ]
    assert writes == []


def test_every_warm_resource_and_output_is_under_the_condition() -> None:
    template = cfn.template()
    warm = [logical_id for logical_id in template["Resources"] if logical_id.startswith("Warm")]
    # With WarmPullDocument, WarmBuildFailuresAlarm, WarmBuildersLeftBehindAlarm and the uninstall's three.
    assert len(warm) == 16
    assert all(template["Resources"][logical_id].get("Condition") == "WarmVolumes" for logical_id in warm)
    outputs = [name for name in template["Outputs"] if name.startswith("Warm")]
    assert outputs and all(template["Outputs"][name].get("Condition") == "WarmVolumes" for name in outputs)


def test_on_the_builder_exists_with_ec2_writes_scoped() -> None:
    resources = _resources("true")
    builder = resources["WarmVolumeBuilder"]
    assert builder["Type"] == "AWS::Serverless::StateMachine"
    statements = builder["Properties"]["Policies"][0]["Statement"]
    for statement in statements:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        # A wildcard resource only for actions AWS cannot scope (each commented in the template).
        if statement["Resource"] == "*":
            assert all(a.startswith(("ec2:Describe", "ssm:GetCommandInvocation")) for a in actions), statement
        # Whatever terminates, tags or deletes needs this stack's tag on the resource.
        if {"ec2:TerminateInstances", "ec2:DeleteSnapshot"} & set(actions):
            assert "ec2:ResourceTag/" in json.dumps(statement["Condition"])


def test_the_builder_cannot_send_the_clusters_document() -> None:
    """Its pull is WarmPullDocument's: the cluster's PrefetchDocument (whose commands the status function counts) is
    not among the documents its role may send."""
    statements = cfn.resource("WarmVolumeBuilder")["Properties"]["Policies"][0]["Statement"]
    (documents,) = [s["Resource"] for s in statements if s["Sid"] == "RunBuilderSteps"]
    assert "PrefetchDocument" not in json.dumps(documents) and "WarmPullDocument" in json.dumps(documents)


def test_the_definition_gets_every_substitution_it_names() -> None:
    named = set(re.findall(r"\$\{(\w+)\}", DEFINITION.read_text()))
    given = set(cfn.resource("WarmVolumeBuilder")["Properties"]["DefinitionSubstitutions"])
    assert named == given


@pytest.mark.parametrize("subnet", ["", "subnet-0123456789abcdef0"])
def test_the_builder_subnet_is_required_only_with_warm_volumes(subnet: str) -> None:
    rule = cfn.template()["Rules"]["WarmVolumesNeedABuilderSubnet"]
    values = cfn.parameter_values(WarmVolumes="true", WarmBuilderSubnetId=subnet)
    assert cfn.resolve(rule["RuleCondition"], values) is True
    assert cfn.resolve(rule["Assertions"][0]["Assert"], values) is bool(subnet)


@pytest.mark.parametrize("document", ["WarmPrepareDocument", "WarmSealDocument"])
def test_the_builder_documents_are_generated_from_their_files(document: str) -> None:
    """Fixed scripts (nothing to interpolate) generated from document/ like the node's: the Makefile's shellcheck line
    checks those files."""
    (source,) = [d for d in generate.DOCUMENTS if d.resource == document]
    content = cfn.resource(document)["Properties"]["Content"]
    assert "parameters" not in content
    ((script,),) = [step["inputs"]["runCommand"] for step in content["mainSteps"]]
    assert script == source.script.read_text()


def test_every_script_of_document_is_shellchecked() -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile[makefile.index("\nshellcheck:") :].split("\n\n", 1)[0].replace("\\\n", " ")
    checked = set(re.findall(r"document/[\w.]+\.sh", recipe))
    assert checked == {f"document/{path.name}" for path in (ROOT / "document").glob("*.sh")}
    assert "--shell=bash" in recipe


# --- the planner (WarmPlannerFunction) -----------------------------------------------------------------------------


def _statements(logical_id: str) -> list[dict[str, Any]]:
    policies = cfn.resource(logical_id)["Properties"]["Policies"]
    return [statement for policy in policies if "Statement" in policy for statement in policy["Statement"]]


def test_off_there_is_no_planner_and_no_schedule_of_its_own() -> None:
    resources = _resources("false")
    assert "WarmPlannerFunction" not in resources
    assert not [r for r in resources.values() if r["Type"] == "AWS::Serverless::Function" and "warm" in json.dumps(r)]


def test_on_the_planner_exists_with_its_triggers() -> None:
    planner = _resources("true")["WarmPlannerFunction"]
    events = planner["Properties"]["Events"]
    assert events["Tick"]["Properties"]["Schedule"] == "rate(15 minutes)"
    assert json.loads(events["Tick"]["Properties"]["Input"]) == {"trigger": "tick"}
    assert json.loads(events["Daily"]["Properties"]["Input"]) == {"trigger": "daily"}
    ended = events["BuildEnded"]["Properties"]["Pattern"]
    assert ended["detail"] == {
        "stateMachineArn": [{"Ref": "WarmVolumeBuilder"}],
        "status": ["FAILED", "TIMED_OUT", "ABORTED"],
    }
    assert ended["detail-type"] == ["Step Functions Execution Status Change"]
    push = events["PushWanted"]["Properties"]["Pattern"]
    assert push["detail"]["action-type"] == ["PUSH"] and push["detail"]["result"] == ["SUCCESS"]
    # The debounce cannot be finer than the tick that applies it.
    assert cfn.template()["Parameters"]["WarmBuildDebounceMinutes"]["MinValue"] >= 15


def test_the_planner_policy_is_scoped() -> None:
    for statement in _statements("WarmPlannerFunction"):
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        if statement["Resource"] == "*":
            assert all(action.startswith(("ec2:Describe", "autoscaling:Describe")) for action in actions), statement
        if "ec2:DeleteLaunchTemplateVersions" in actions:
            # The stack's own launch template only: retention prunes its old versions, never another template's.
            assert "launch-template/${WarmLaunchTemplate}" in json.dumps(statement["Resource"])
        if {"ec2:TerminateInstances"} & set(actions):
            assert "ec2:ResourceTag/eks-image-prefetch:warm-builder" in json.dumps(statement["Condition"])
        if {"ec2:DeleteSnapshot", "ec2:DisableFastSnapshotRestores"} & set(actions):
            assert "ec2:ResourceTag/eks-image-prefetch:warm-snapshot" in json.dumps(statement["Condition"])
        if any(action.startswith("dynamodb:") for action in actions):
            assert statement["Condition"] == {"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": ["WARM"]}}
        if any(action.startswith("states:") for action in actions):
            assert statement["Resource"] == {"Ref": "WarmVolumeBuilder"}
    writes = {
        action
        for statement in _statements("WarmPlannerFunction")
        for action in (statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]])
        if action.startswith("ec2:") and not action.startswith("ec2:Describe")
    }
    assert writes == {
        "ec2:TerminateInstances",
        "ec2:DeleteSnapshot",
        "ec2:DisableFastSnapshotRestores",
        "ec2:DeleteLaunchTemplateVersions",
    }
    described = json.dumps(_statements("WarmPlannerFunction"))
    assert "ec2:DescribeLaunchTemplates" in described and "autoscaling:DescribeAutoScalingGroups" in described


def test_the_planner_environment_is_valid_settings() -> None:
    environment = cfn.function_environment(
        "WarmPlannerFunction", WarmVolumes="true", WarmBuilderSubnetId="subnet-0123456789abcdef0"
    )
    settings = PlannerSettings.from_env(environment)
    assert settings.warm_state_machine_arn == "stand-in-WarmVolumeBuilder"
    assert settings.warm_snapshots_to_keep == 2
    assert settings.warm_build_debounce_minutes == 180
    assert settings.warm_stack_name == "eks-image-prefetch"
    assert settings.status_table == "stand-in-StatusTable"


def test_a_builder_older_than_the_sweep_bound_belongs_to_no_build_that_can_still_end() -> None:
    definition = json.loads(DEFINITION.read_text())
    waits = {name for name, state in definition["States"].items() if state["Type"] == "Wait"}
    assert waits == set(BOUNDED_WAITS)
    assert len(definition["States"]["PlanCommands"]["Parameters"]["list"]) == BOUNDED_WAITS["WaitForCommand"]
    substitutions = cfn.resource("WarmVolumeBuilder")["Properties"]["DefinitionSubstitutions"]
    longest_wait = int(substitutions["PollSeconds"]) * int(substitutions["MaxPolls"])
    bound = int(cfn.resource("WarmPlannerFunction")["Properties"]["Environment"]["Variables"]["WARM_BUILD_MAX_SECONDS"])
    assert bound >= sum(BOUNDED_WAITS.values()) * longest_wait


def test_the_planner_has_its_own_errors_alarm() -> None:
    alarm = _resources("true")["WarmPlannerErrorsAlarm"]["Properties"]
    assert alarm["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": "WarmPlannerFunction"}}]
    assert alarm["MetricName"] == "Errors" and alarm["Threshold"] == 0
    assert alarm["AlarmActions"] == cfn.resource("FunctionErrorsAlarm")["Properties"]["AlarmActions"]


def test_the_launch_template_carries_the_warm_boot_part_as_mime_multipart() -> None:
    """What a managed node group (EKS merges its NodeConfig part into a MIME multi-part) or cloud-init reads."""
    data = _resources("true")["WarmLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    message = email.message_from_string(data["UserData"]["Fn::Base64"])

    assert message.is_multipart() and message.get_content_type() == "multipart/mixed"
    (part,) = message.get_payload()
    assert part.get_content_type() == "text/x-shellscript"
    assert part.get_payload() == (ROOT / "document" / "warm_boot.sh").read_text()
    assert len(data["UserData"]["Fn::Base64"].encode()) <= 16 * 1024  # EC2's limit before base64


def test_each_build_bases_its_version_on_the_default_one_or_after_a_stack_update_on_the_stacks() -> None:
    states = json.loads(DEFINITION.read_text())["States"]
    read = states["ReadDefaultLaunchTemplateVersion"]

    assert read["Parameters"] == {"LaunchTemplateId": "${LaunchTemplateId}", "Versions": ["$Default"]}
    assert read["Next"] == "StackUpdatedTheTemplate"
    assert states["SourceIsTheDefault"]["Parameters"] == {"version.$": "$.previousDefault.version"}
    assert states["SourceIsTheStacksVersion"]["Parameters"] == {"version.$": "$.config.stackTemplateVersion"}
    substitutions = cfn.resource("WarmVolumeBuilder")["Properties"]["DefinitionSubstitutions"]
    assert substitutions["StackLaunchTemplateVersion"] == {"Fn::GetAtt": ["WarmLaunchTemplate", "LatestVersionNumber"]}
    creates = ["CreateLaunchTemplateVersion", "CreateLaunchTemplateVersionWithoutRate"]
    for create in creates:
        assert states[create]["Parameters"]["SourceVersion.$"] == "$.sourceVersion.version"
    transitions = {
        name: json.dumps({k: v for k, v in state.items() if k in {"Next", "Choices", "Catch", "Default"}})
        for name, state in states.items()
    }
    into_create = [name for name, text in transitions.items() if any(f'"{create}"' in text for create in creates)]
    assert into_create == ["RateOrFastSnapshotRestore"]
    assert "ec2:DescribeLaunchTemplateVersions" in _actions(_resources("true")["WarmVolumeBuilder"])


# --- stack deletion (WarmUninstall) ----------------------------------------------------------------------------------


def test_stack_deletion_runs_the_warm_uninstall_after_the_planner_and_before_the_state_machine() -> None:
    """CloudFormation deletes a resource before those it depends on: the planner goes first (no build starts after
    the builds are stopped), the state machine last (its executions can still be stopped)."""
    resources = _resources("true")
    planner_depends = resources["WarmPlannerFunction"]["DependsOn"]
    assert "WarmUninstall" in planner_depends
    uninstall = resources["WarmUninstall"]
    assert uninstall["Type"] == "Custom::WarmVolumesOnDelete"
    assert uninstall["Properties"]["StateMachine"] == {"Ref": "WarmVolumeBuilder"}
    assert uninstall["Properties"]["ServiceToken"] == {"Fn::GetAtt": ["WarmUninstallFunction", "Arn"]}
    # Kept on deletion: what still launches from it keeps launching (its snapshots are kept too).
    assert resources["WarmLaunchTemplate"]["DeletionPolicy"] == "Retain"


def test_the_warm_uninstall_policy_is_scoped() -> None:
    for statement in _statements("WarmUninstallFunction"):
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        if statement["Resource"] == "*":
            assert all(action.startswith("ec2:Describe") for action in actions), statement
        if "ec2:TerminateInstances" in actions:
            assert "ec2:ResourceTag/eks-image-prefetch:warm-builder" in json.dumps(statement["Condition"])
        if "ec2:DisableFastSnapshotRestores" in actions:
            assert "ec2:ResourceTag/eks-image-prefetch:warm-snapshot" in json.dumps(statement["Condition"])
        if "states:StopExecution" in actions:
            assert "execution:${AWS::StackName}-warm-volume-builder:*" in json.dumps(statement["Resource"])
    writes = {
        action
        for statement in _statements("WarmUninstallFunction")
        for action in (statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]])
        if not action.startswith(("ec2:Describe", "states:List"))
    }
    assert writes == {"states:StopExecution", "ec2:TerminateInstances", "ec2:DisableFastSnapshotRestores"}
