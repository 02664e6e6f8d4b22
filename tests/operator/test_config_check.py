"""RepositoryNodeSelectors is refused at deploy time, with the reason, by the ValidateConfiguration custom resource:
run as deployed (harness.stack creates template.yaml in moto and sends the resource's Create request to the real
function, as CloudFormation does), and answering at a real HTTP ResponseURL."""

from __future__ import annotations

import json

import pytest

from eks_prefetch.deploy.config_check import on_request
from harness.stack import ACCOUNT, REGION, Stack, StackRefusedError
from harness.template import template
from tests.operator.test_uninstall import STACK_ID, CloudFormationEndpoint, endpoint  # noqa: F401 - fixture

PARAMETERS = {"ClusterName": "ml-prod", "RepositoryNames": "ml/trainer,ml/inference"}
GOOD = json.dumps({"ml/trainer": {"karpenter.sh/nodepool": ["gpu-a", "gpu-b"]}})


def request(kind: str, url: str, selectors: str) -> dict:
    return {
        "RequestType": kind,
        "ServiceToken": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:check",
        "ResponseURL": url,
        "StackId": STACK_ID,
        "RequestId": f"req-{kind}",
        "LogicalResourceId": "ValidateConfiguration",
        "ResourceType": "Custom::ValidateConfiguration",
        "PhysicalResourceId": "ValidateConfiguration",
        "ResourceProperties": {
            "ServiceToken": "x",
            "RepositoryNames": "ml/trainer,ml/inference",
            "RepositoryNodeSelectors": selectors,
            "NodeTagKey": "eks:cluster-name",
        },
    }


def test_a_valid_selector_deploys_and_reaches_every_function(aws_mock: None) -> None:
    stack = Stack({**PARAMETERS, "RepositoryNodeSelectors": GOOD}).create()

    assert stack.environment("EcrPushFunction")["REPOSITORY_NODE_SELECTORS"] == GOOD
    assert stack.environment("StatusFunction")["REPOSITORY_NODE_SELECTORS"] == GOOD


@pytest.mark.parametrize(
    ("selectors", "reason"),
    [
        ('{"ml/trainer": ', "not valid JSON"),
        ('{"ml/unwatched": {"pool": "gpu"}}', "'ml/unwatched' is not one of RepositoryNames"),
        ('{"ml/trainer": {"a": "1", "b": "2", "c": "3", "d": "4", "e": "5"}}', "5 tag keys, at most 4"),
        # EC2 allows '+' in a tag key; SSM's SendCommand Targets do not: every push of ml/trainer would dead-letter.
        (
            '{"ml/trainer": {"team+pool": "gpu"}}',
            "tag key 'team+pool' has '+', which SSM Run Command's Targets refuse in a tag key",
        ),
    ],
)
def test_an_invalid_selector_fails_the_stack_creation_with_the_reason(
    aws_mock: None, selectors: str, reason: str
) -> None:
    with pytest.raises(StackRefusedError, match="ValidateConfiguration failed: invalid configuration") as refused:
        Stack({**PARAMETERS, "RepositoryNodeSelectors": selectors}).create()
    assert reason in str(refused.value)


def test_a_node_tag_key_ssm_refuses_fails_the_deploy_with_the_reason(aws_mock: None) -> None:
    """Refused by the parameter's pattern (CloudFormation shows its ConstraintDescription), and by the check too,
    should a stack give it one some other way."""
    with pytest.raises(ValueError, match="NodeTagKey"):
        Stack({**PARAMETERS, "NodeTagKey": "team+cluster"}).create()

    outcome = on_request(
        "Update", {"RepositoryNames": "ml/trainer", "NodeTagKey": "team+cluster"}, "ValidateConfiguration", "x"
    )
    assert outcome.status == "FAILED"
    assert outcome.reason.startswith("invalid configuration: NodeTagKey 'team+cluster' has '+', which SSM Run")


def test_the_function_answers_cloudformation_failed_on_update_and_success_on_delete(
    aws_mock: None,
    endpoint: CloudFormationEndpoint,  # noqa: F811 - the fixture
) -> None:
    stack = Stack(PARAMETERS).create()
    function = stack.functions["ConfigCheckFunction"]

    function.invoke(request("Update", endpoint.url, '{"ml/unwatched": {"pool": "gpu"}}'))
    function.invoke(request("Update", endpoint.url, GOOD))
    function.invoke(request("Delete", endpoint.url, "not json"))

    refused, accepted, deleted = endpoint.bodies
    assert refused["Status"] == "FAILED"
    assert "'ml/unwatched' is not one of RepositoryNames" in refused["Reason"]
    assert accepted["Status"] == deleted["Status"] == "SUCCESS"
    # Stable: a new physical id would make CloudFormation delete the "old" resource.
    assert {body["PhysicalResourceId"] for body in endpoint.bodies} == {"ValidateConfiguration"}


def test_every_function_that_handles_events_waits_for_the_check() -> None:
    resources = template()["Resources"]
    for name in ("EcrPushFunction", "NodeLaunchFunction", "StatusFunction"):
        assert "ValidateConfiguration" in resources[name]["DependsOn"]
