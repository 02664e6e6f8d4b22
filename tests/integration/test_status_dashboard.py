"""Every metric and dimension set the dashboard and the alarms show is one the code emits.

The functions run against moto through scenarios that emit every metric of the contract; their EMF output (printed
JSON) is collected, and compared with the metrics of the dashboard body (metric rows and SEARCH expressions) and of
the alarms in template.yaml.

Test doubles (testing/ssm.py): ``FakeInvocations`` and ``Agents`` (moto has no real invocation results,
ListCommandInvocations or DescribeInstanceInformation), and the node-launch queue on moto's SQS with Lambda's event
source (testing/sqs.py ``LaunchQueue``). The warm planner runs against ``WarmStack`` (testing/warm.py: the WarmVolumes
resources in moto; the builder is not executed, ``WarmStack.finish`` publishes what it would).
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from eks_prefetch import settings
from harness import template as cfn
from testing.deployment import load_handler
from testing.ec2 import NODE_TAGS, run_instance
from testing.ecr import at
from testing.events import push_event, running_event, scheduled_event, status_event
from testing.output import emf_documents, image_line, summary_line
from testing.sqs import LaunchQueue
from testing.ssm import Answer
from testing.warm import WarmStack
from tests.integration.test_status import (
    ENDED,
    INFERENCE,
    TRAINER,
    good_output,
    ref,
    run_node,
    send,
    send_to_new_node,
)
from tests.unit.test_status_template import dashboard_body

NAMESPACE = cfn.template()["Globals"]["Function"]["Environment"]["Variables"]["POWERTOOLS_METRICS_NAMESPACE"]
CONTRACT = {
    ("ImagesPulled", frozenset({"ClusterName", "Repository"})),
    ("ImagesCached", frozenset({"ClusterName", "Repository"})),
    ("ImagesSkipped", frozenset({"ClusterName", "Repository"})),
    ("ImagesFailed", frozenset({"ClusterName", "Repository"})),
    ("ImagesFailedByReason", frozenset({"ClusterName", "Reason"})),
    ("PullSeconds", frozenset({"ClusterName", "Repository"})),
    ("Invocations", frozenset({"ClusterName", "Status"})),
    ("PushToCachedSeconds", frozenset({"ClusterName", "Repository"})),
    ("LaunchToCachedSeconds", frozenset({"ClusterName"})),
    ("NodesBootedWarm", frozenset({"ClusterName"})),
    ("NodesBootedCold", frozenset({"ClusterName"})),
    ("Coverage", frozenset({"ClusterName", "Repository"})),
    ("NodesMissingNewest", frozenset({"ClusterName", "Repository"})),
}
# The warm planner's (a Powertools Metrics object: it carries the function's service), on the warm row.
WARM_CONTRACT = {
    (name, frozenset({"ClusterName", "service"}))
    for name in (
        "WarmBuildsStarted",
        "WarmBuildsWanted",
        "WarmBuildersLeftBehind",
        "WarmSnapshotsDeleted",
        "WarmSnapshotAgeSeconds",
        "WarmSnapshotImages",
    )
}


def emitted_metrics(stdout: str) -> set[tuple[str, frozenset[str]]]:
    found = set()
    for document in emf_documents(stdout):
        (directive,) = document["_aws"]["CloudWatchMetrics"]
        (dimensions,) = directive["Dimensions"]
        found.update((metric["Name"], frozenset(dimensions)) for metric in directive["Metrics"])
    return found


@pytest.fixture
def everything_emitted(
    status_env, images, fake, fleet, monkeypatch, lambda_context, capsys
) -> set[tuple[str, frozenset[str]]]:
    """Run the status function and the node-launch function through every outcome; what they printed as EMF."""
    status_handler = load_handler("status").lambda_handler
    trainer, inference = images[TRAINER], images[INFERENCE]
    node, other = run_node(launched=ENDED - timedelta(seconds=60)), run_node()
    fleet.online = {node, other}
    capsys.readouterr()

    mixed = send_to_new_node(node, [ref(TRAINER, trainer), ref(INFERENCE, inference)])
    stdout = "\n".join(
        [
            image_line(ref(TRAINER, trainer), "pulled", trainer),
            image_line(ref(INFERENCE, inference), "failed", error="timeout"),
            summary_line(pulled=1, failed=1, omitted=3),
        ]
    )
    fake.set(mixed, node, Answer("Failed", "Failed", stdout, ENDED))
    status_handler(status_event(mixed, node, "Failed", "eks-image-prefetch-PrefetchDocument-ABC123"), lambda_context)
    for output in (
        good_output([(ref(TRAINER, trainer), "cached", trainer)]),
        image_line(ref(INFERENCE, inference), "skipped", reason="disk") + "\n" + summary_line(skipped=1),
        "not json",
    ):
        command_id = send([other], [ref(TRAINER, trainer)])
        fake.set(command_id, other, Answer("Success", "Success", output, at(6)))
    status_handler(scheduled_event(), lambda_context)  # counts the three whose event was "lost", then coverage

    # Node launch: a node whose agent is not online is retried (NodesNotReady), then given up (NodesGivenUp).
    monkeypatch.setenv("NODE_LAUNCH_MAX_RECEIVES", "2")
    settings.load.cache_clear()
    queue = LaunchQueue(load_handler("node_launch").lambda_handler, lambda_context, max_receives=2)
    queue.publish(running_event(run_instance(NODE_TAGS)))  # a node the fleet's agents do not know
    queue.deliver()
    queue.deliver()

    # The warm planner: a first build, published; a tick that measures the snapshot; a push.
    warm = WarmStack()
    for key, value in warm.environment().items():
        monkeypatch.setenv(key, value)
    settings.load.cache_clear()
    planner = load_handler("warm_planner").lambda_handler
    assert planner({"trigger": "tick"}, lambda_context)["result"] == "started"
    (execution,) = warm.executions("RUNNING")
    warm.finish(execution)
    planner({"trigger": "tick"}, lambda_context)
    planner(push_event(TRAINER, trainer, "v2"), lambda_context)

    printed = capsys.readouterr().out
    assert {document["_aws"]["CloudWatchMetrics"][0]["Namespace"] for document in emf_documents(printed)} == {
        "EksImagePrefetchTest"  # the test deployment's namespace (tests/conftest.py)
    }
    return emitted_metrics(printed)


_SEARCH = re.compile(r"\{(?P<schema>[^}]+)\}\s+MetricName=\\?\"(?P<name>\w+)\\?\"")


def dashboard_metrics() -> set[tuple[str, str, frozenset[str]]]:
    """(namespace, metric, dimension names) of every metric row and SEARCH expression of the dashboard."""
    shown = set()
    for widget in dashboard_body()["widgets"]:
        for row in widget["properties"].get("metrics", []):
            head = [item for item in row if not isinstance(item, dict)]
            if head:
                namespace, name, *pairs = head
                shown.add((namespace, name, frozenset(pairs[0::2])))
            for item in row:
                if isinstance(item, dict) and "expression" in item:
                    for match in _SEARCH.finditer(item["expression"]):
                        namespace, *dimensions = match.group("schema").split(",")
                        shown.add((namespace, match.group("name"), frozenset(dimensions)))
    return shown


def alarm_metrics() -> set[tuple[str, str, frozenset[str]]]:
    shown = set()
    for resource in cfn.template()["Resources"].values():
        if resource["Type"] != "AWS::CloudWatch::Alarm":
            continue
        properties = resource["Properties"]
        metrics = [m["MetricStat"]["Metric"] for m in properties.get("Metrics", []) if "MetricStat" in m]
        if "MetricName" in properties:
            metrics.append(properties)
        for metric in metrics:
            dimensions = frozenset(d["Name"] for d in metric.get("Dimensions", []))
            shown.add((metric["Namespace"], metric["MetricName"], dimensions))
    return shown


def test_the_dashboard_and_alarms_show_only_metrics_the_code_emits(everything_emitted):
    ours = {(name, dims) for namespace, name, dims in dashboard_metrics() | alarm_metrics() if namespace == NAMESPACE}

    assert ours, "the dashboard shows none of the application's metrics"
    assert ours - everything_emitted == set()


def test_the_dashboard_shows_the_whole_contract(everything_emitted):
    shown = {(name, dims) for namespace, name, dims in dashboard_metrics() if namespace == NAMESPACE}

    assert everything_emitted >= CONTRACT | WARM_CONTRACT
    assert shown >= CONTRACT | WARM_CONTRACT
    assert ("NodesNotReady", frozenset({"ClusterName", "service"})) in shown & everything_emitted
    assert ("NodesGivenUp", frozenset({"ClusterName", "service"})) in shown & everything_emitted


def test_every_metric_names_its_cluster(everything_emitted):
    """Two stacks in one account share the namespace: no metric may mix their numbers."""
    assert everything_emitted
    assert [(name, dims) for name, dims in everything_emitted if "ClusterName" not in dims] == []


def test_the_service_dimension_of_node_launch_metrics_matches_the_template():
    rows = [row for widget in dashboard_body()["widgets"] for row in widget["properties"].get("metrics", [])]
    node_rows = [row for row in rows if row[:2] in ([NAMESPACE, "NodesNotReady"], [NAMESPACE, "NodesGivenUp"])]
    service = cfn.resource("NodeLaunchFunction")["Properties"]["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"]

    assert node_rows
    assert all(row[2:6] == ["ClusterName", "STANDIN-ClusterName", "service", service] for row in node_rows)


def test_the_service_dimension_of_warm_planner_metrics_matches_the_template():
    service = cfn.resource("WarmPlannerFunction")["Properties"]["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"]
    rows = [row for widget in dashboard_body()["widgets"] for row in widget["properties"].get("metrics", [])]
    warm_rows = [row for row in rows if row[:1] == [NAMESPACE] and str(row[1]).startswith("Warm")]
    alarm = cfn.resource("WarmBuildersLeftBehindAlarm")["Properties"]

    assert len(warm_rows) == len(WARM_CONTRACT)
    assert all(row[2:6] == ["ClusterName", "STANDIN-ClusterName", "service", service] for row in warm_rows)
    assert alarm["Dimensions"][1] == {"Name": "service", "Value": service}


def test_the_builds_are_step_functions_own_metrics_of_this_builder():
    rows = [row for widget in dashboard_body()["widgets"] for row in widget["properties"].get("metrics", [])]
    states = {row[1]: row[2:4] for row in rows if row[:1] == ["AWS/States"]}
    alarm = cfn.resource("WarmBuildFailuresAlarm")["Properties"]["Metrics"]

    assert set(states) == {
        "ExecutionsStarted",
        "ExecutionsSucceeded",
        "ExecutionsFailed",
        "ExecutionsTimedOut",
        "ExecutionsAborted",
        "ExecutionTime",
    }
    assert all(dimension == ["StateMachineArn", "STANDIN-WarmVolumeBuilder"] for dimension in states.values())
    stats = [m["MetricStat"]["Metric"] for m in alarm if "MetricStat" in m]
    assert {m["MetricName"] for m in stats} == {"ExecutionsFailed", "ExecutionsTimedOut"}
    assert all(m["Dimensions"] == [{"Name": "StateMachineArn", "Value": {"Ref": "WarmVolumeBuilder"}}] for m in stats)
