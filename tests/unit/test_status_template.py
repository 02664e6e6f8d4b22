"""The status resources of template.yaml: rule, schedule, table, least-privilege IAM, alarms, dashboard, outputs."""

from __future__ import annotations

import json
import re
from typing import Any

from eks_prefetch.settings import StatusSettings
from harness import template as cfn

FUNCTIONS = ("EcrPushFunction", "NodeLaunchFunction", "StatusFunction")
DEAD_LETTER_QUEUES = ("PushDeadLetterQueue", "NodeLaunchDeadLetterQueue", "StatusDeadLetterQueue")


def function() -> dict[str, Any]:
    return cfn.resource("StatusFunction")["Properties"]


def statements() -> list[dict[str, Any]]:
    return [s for policy in function()["Policies"] if isinstance(policy, dict) for s in policy.get("Statement", [])]


def test_rule_passes_only_final_statuses_of_our_document():
    event = function()["Events"]["InvocationStatus"]

    assert event["Type"] == "EventBridgeRule"
    assert event["Properties"]["Pattern"] == {
        "source": ["aws.ssm"],
        "detail-type": ["EC2 Command Invocation Status-change Notification"],
        "detail": {
            "document-name": [{"Ref": "PrefetchDocument"}],
            "status": [{"anything-but": ["Pending", "InProgress", "Delayed", "Cancelling"]}],
        },
    }
    assert event["Properties"]["RetryPolicy"]["MaximumRetryAttempts"] == 8
    assert event["Properties"]["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": ["StatusDeadLetterQueue", "Arn"]}}


def test_sweep_runs_every_five_minutes_and_fits_in_the_timeout():
    sweep = function()["Events"]["Sweep"]

    assert sweep["Type"] == "Schedule"
    assert sweep["Properties"]["Schedule"] == "rate(5 minutes)"
    assert sweep["Properties"]["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": ["StatusDeadLetterQueue", "Arn"]}}
    assert function()["Timeout"] == 300
    on_failure = function()["EventInvokeConfig"]["DestinationConfig"]["OnFailure"]
    assert on_failure == {"Type": "SQS", "Destination": {"Fn::GetAtt": ["StatusDeadLetterQueue", "Arn"]}}


def test_status_table_schema_ttl_and_encryption():
    table = cfn.resource("StatusTable")["Properties"]

    assert table["KeySchema"] == [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert table["SSESpecification"] == {"SSEEnabled": True}
    assert table["BillingMode"] == "PAY_PER_REQUEST"


def test_function_environment_gives_valid_settings_with_the_status_table():
    variables = {
        **cfn.template()["Globals"]["Function"]["Environment"]["Variables"],
        **function()["Environment"]["Variables"],
    }
    assert variables["STATUS_TABLE"] == {"Ref": "StatusTable"}
    assert variables["NODE_STATE_TTL_SECONDS"] == {"Ref": "NodeStateTtlSeconds"}

    loaded = StatusSettings.from_env(cfn.function_environment("StatusFunction"))

    assert loaded.status_table == "stand-in-StatusTable"
    assert loaded.node_state_ttl_seconds == cfn.template()["Parameters"]["NodeStateTtlSeconds"]["Default"]


def test_iam_is_scoped_to_the_table_and_star_only_where_aws_allows_nothing_else():
    by_sid = {statement["Sid"]: statement for statement in statements()}

    assert by_sid["StatusTable"]["Action"] == [
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:BatchGetItem",
    ]
    assert by_sid["StatusTable"]["Resource"] == {"Fn::GetAtt": ["StatusTable", "Arn"]}
    star = {sid for sid, statement in by_sid.items() if statement["Resource"] == "*"}
    assert star == {"ReadInvocations", "ReadAgentRegistration", "ReadLaunchTime"}
    assert by_sid["ReadInvocations"]["Action"] == [
        "ssm:GetCommandInvocation",
        "ssm:ListCommandInvocations",
        "ssm:ListCommands",
    ]
    assert by_sid["ReadAgentRegistration"]["Action"] == "ssm:DescribeInstanceInformation"
    assert by_sid["ReadLaunchTime"]["Action"] == "ec2:DescribeInstances"
    # Self-repair sends with the shared least-privilege policy (the document, to tagged nodes only) and the
    # idempotency table, like the other paths; nothing more.
    assert [policy for policy in function()["Policies"] if "Statement" not in policy] == [
        {"Ref": "ReadWatchedRepositoriesPolicy"},
        {"Ref": "SendPrefetchCommandPolicy"},
        {"DynamoDBCrudPolicy": {"TableName": {"Ref": "IdempotencyTable"}}},
    ]
    # Every "*" carries a comment saying why.
    text = cfn.TEMPLATE.read_text()
    block = text[text.index("  StatusFunction:\n") : text.index("  StatusFunctionLogGroup:")]
    assert block.count('Resource: "*"') == 3
    for match in re.finditer(r'\n(\s*)Resource: "\*"', block):
        preceding = block[: match.start()].splitlines()[-1].strip()
        assert preceding.startswith("#"), preceding


def test_alarms_notify_the_encrypted_topic():
    alarms = {name: r for name, r in cfn.template()["Resources"].items() if r["Type"] == "AWS::CloudWatch::Alarm"}

    assert set(alarms) == {
        "FailureRateAlarm",
        "DeadLetterAlarm",
        "CoverageAlarm",
        "FunctionErrorsAlarm",
        "WarmPlannerErrorsAlarm",  # only with WarmVolumes, as the two below
        "WarmBuildFailuresAlarm",
        "WarmBuildersLeftBehindAlarm",
    }
    for alarm in alarms.values():
        assert alarm["Properties"]["AlarmActions"] == [{"Ref": "AlarmTopic"}]
        assert alarm["Properties"]["TreatMissingData"] == "notBreaching"
    topic = cfn.resource("AlarmTopic")["Properties"]
    assert topic["KmsMasterKeyId"] == {"Ref": "AlarmTopicKey"}
    key_statements = cfn.resource("AlarmTopicKey")["Properties"]["KeyPolicy"]["Statement"]
    cloudwatch = next(s for s in key_statements if s["Principal"] == {"Service": "cloudwatch.amazonaws.com"})
    assert cloudwatch["Action"] == ["kms:Decrypt", "kms:GenerateDataKey"]
    subscription = cfn.resource("AlarmEmailSubscription")
    assert subscription["Condition"] == "HasAlarmEmail"
    assert subscription["Properties"]["Endpoint"] == {"Ref": "AlarmEmail"}


def _metric_ids(alarm: str) -> dict[str, dict[str, Any]]:
    return {m["Id"]: m for m in cfn.resource(alarm)["Properties"]["Metrics"]}


def test_failure_rate_alarm_is_metric_math_over_the_cluster_invocations():
    metrics = _metric_ids("FailureRateAlarm")
    properties = cfn.resource("FailureRateAlarm")["Properties"]

    assert properties["Threshold"] == {"Ref": "FailureRateAlarmPercent"}
    assert properties["ComparisonOperator"] == "GreaterThanThreshold"
    assert metrics["failed"]["MetricStat"]["Metric"]["MetricName"] == "InvocationsFailed"
    assert metrics["total"]["MetricStat"]["Metric"]["MetricName"] == "Invocations"
    assert metrics["rate"]["Expression"] == "IF(total > 0, 100 * failed / total, 0)"


def test_dead_letter_alarm_watches_every_dead_letter_queue():
    metrics = _metric_ids("DeadLetterAlarm")
    queues = {
        m["MetricStat"]["Metric"]["Dimensions"][0]["Value"]["Fn::GetAtt"][0]
        for m in metrics.values()
        if "MetricStat" in m
    }
    queue_resources = {n for n, r in cfn.template()["Resources"].items() if r["Type"] == "AWS::SQS::Queue"}

    assert queues == set(DEAD_LETTER_QUEUES) == {q for q in queue_resources if "DeadLetter" in q}
    assert cfn.resource("DeadLetterAlarm")["Properties"]["Threshold"] == 0


def test_coverage_alarm_needs_sustained_low_coverage():
    properties = cfn.resource("CoverageAlarm")["Properties"]

    assert properties["MetricName"] == "Coverage"
    assert properties["Dimensions"] == [{"Name": "ClusterName", "Value": {"Ref": "ClusterName"}}]
    assert properties["Statistic"] == "Minimum"
    assert properties["Period"] == 300
    assert properties["EvaluationPeriods"] == properties["DatapointsToAlarm"] == {"Ref": "CoverageAlarmPeriods"}
    assert properties["ComparisonOperator"] == "LessThanThreshold"
    assert properties["Threshold"] == {"Ref": "CoverageAlarmPercent"}


def test_function_errors_alarm_covers_every_function():
    metrics = _metric_ids("FunctionErrorsAlarm")
    functions = {
        m["MetricStat"]["Metric"]["Dimensions"][0]["Value"]["Ref"] for m in metrics.values() if "MetricStat" in m
    }
    all_functions = {n for n, r in cfn.template()["Resources"].items() if r["Type"] == "AWS::Serverless::Function"}

    # The uninstall's functions (the unpin, the warm volumes') run only while the stack (and this alarm) is being
    # deleted; the configuration check only during a deploy, whose failure CloudFormation itself reports with the
    # reason. The warm planner, which exists only with WarmVolumes, has its own alarm (WarmPlannerErrorsAlarm,
    # tests/unit/test_warm_template.py).
    deploy_time = {"UnpinFunction", "WarmUninstallFunction", "ConfigCheckFunction"}
    assert functions == set(FUNCTIONS) == all_functions - deploy_time - {"WarmPlannerFunction"}


def dashboard_text(*, warm: bool = True) -> str:
    """The dashboard's !Sub text with its variables (the warm row: an !If on WarmVolumes) put in as CloudFormation
    does, for WarmVolumes on or off; ${...} of resources and parameters left as they are."""
    text, variables = cfn.resource("PrefetchDashboard")["Properties"]["DashboardBody"]["Fn::Sub"]
    for name, value in variables.items():
        condition, when_on, when_off = value["Fn::If"]
        assert condition == "WarmVolumes"
        chosen = when_on if warm else when_off
        text = text.replace("${" + name + "}", chosen["Fn::Sub"] if isinstance(chosen, dict) else chosen)
    return text


def dashboard_body(*, warm: bool = True) -> dict[str, Any]:
    """The dashboard JSON with every ${...} of the !Sub replaced by a stand-in (WarmVolumes on: every widget)."""
    text = dashboard_text(warm=warm)
    return json.loads(re.sub(r"\$\{([^}!]+)\}", lambda match: f"STANDIN-{match.group(1)}", text))


def test_the_warm_row_is_on_the_dashboard_only_with_warm_volumes():
    on, off = dashboard_body(warm=True), dashboard_body(warm=False)
    warm_resources = {"WarmVolumeBuilder", "WarmPlannerFunction", "WarmPlannerErrorsAlarm"}

    assert len(on["widgets"]) > len(off["widgets"])
    assert on["widgets"][: len(off["widgets"])] == off["widgets"]
    assert not [name for name in warm_resources if name in json.dumps(off)]
    assert all(f"STANDIN-{name}" in json.dumps(on) for name in warm_resources)
    # Every warm resource the row names exists under the same condition (a Warm* parameter exists either way).
    for name in re.findall(r"\$\{(Warm\w+)", dashboard_text(warm=True)):
        if name not in cfn.template()["Parameters"]:
            assert cfn.resource(name).get("Condition") == "WarmVolumes", name
    # Side by side, never on top of each other.
    cells = [
        (x, y)
        for widget in on["widgets"]
        for x in range(widget["x"], widget["x"] + widget["width"])
        for y in range(widget["y"], widget["y"] + widget["height"])
    ]
    assert len(cells) == len(set(cells))


def test_dashboard_body_is_valid_json_and_shows_every_queue_and_function():
    body = dashboard_body()
    text = json.dumps(body)

    assert body["widgets"]
    for name in (*DEAD_LETTER_QUEUES,):
        assert f"STANDIN-{name}.QueueName" in text
    for name in FUNCTIONS:
        for metric in ("Errors", "Throttles", "Duration"):
            assert any(
                row[:4] == ["AWS/Lambda", metric, "FunctionName", f"STANDIN-{name}"]
                for widget in body["widgets"]
                for row in widget["properties"].get("metrics", [])
            ), (name, metric)
    substituted = set(re.findall(r"\$\{([^}]+)\}", dashboard_text(warm=True)))
    resources = set(cfn.template()["Resources"]) | set(cfn.template()["Parameters"])
    assert {name.split(".")[0] for name in substituted if not name.startswith("AWS::")} <= resources


def test_outputs_name_the_dashboard_and_the_status_resources():
    outputs = cfn.template()["Outputs"]

    assert "#dashboards/dashboard/${PrefetchDashboard}" in outputs["DashboardUrl"]["Value"]["Fn::Sub"]
    assert outputs["StatusFunctionName"]["Value"] == {"Ref": "StatusFunction"}
    assert outputs["AlarmTopicArn"]["Value"] == {"Ref": "AlarmTopic"}
    assert outputs["StatusDeadLetterQueueUrl"]["Value"] == {"Ref": "StatusDeadLetterQueue"}
