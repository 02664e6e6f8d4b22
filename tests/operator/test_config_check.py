"""RepositoryNodeSelectors is refused at deploy time, with the reason, by the ValidateConfiguration custom resource:
run as deployed (harness.stack creates template.yaml in moto and sends the resource's Create request to the real
function, as CloudFormation does), and answering at a real HTTP ResponseURL."""

from __future__ import annotations

import json

import pytest

from eks_prefetch.deploy.config_check import check_properties, on_request
from harness.stack import ACCOUNT, REGION, Stack, StackRefusedError
from harness.template import template
from testing.cloudformation import CloudFormationEndpoint
from tests.operator.test_uninstall import STACK_ID

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


def selector_of(size: int) -> str:
    """A selector of ml/trainer whose JSON text grows with ``size``: values of 200 characters, then the rest."""
    values = [f"{n:03}" + "v" * 197 for n in range(size // 200)] + ["x" * (size % 200 + 1)]
    return json.dumps({"ml/trainer": {"karpenter.sh/nodepool": values}})


def test_a_selector_too_large_for_the_functions_environment_fails_the_check_with_the_budget(aws_mock: None) -> None:
    """CloudFormation takes a parameter of 4,096 bytes; the functions carry it in an environment Lambda caps at 4 KB
    in all. A 3.3 KB selector is refused by the check, saying by how much, not by Lambda on the first function."""
    selectors = selector_of(3300)

    with pytest.raises(StackRefusedError, match="ValidateConfiguration failed: invalid configuration") as refused:
        Stack({**PARAMETERS, "RepositoryNodeSelectors": selectors}).create()

    reason = str(refused.value)
    assert "of the status function's environment (RepositoryNodeSelectors 3," in reason
    assert "its other variables leave of Lambda's 4,096 bytes per function: shorten RepositoryNodeSelectors" in reason


def test_the_largest_selector_the_check_accepts_deploys_every_function(aws_mock: None) -> None:
    """The budget is safe and not short: at the largest size the check accepts, every function is created (the
    harness refuses an environment over 4 KB as Lambda does), and the next size is refused by the check."""
    parameters = {**PARAMETERS, "WarmVolumes": "true", "WarmBuilderSubnetId": "subnet-0123456789abcdef0"}
    stack = Stack(parameters)
    given = dict(template()["Resources"]["ValidateConfiguration"]["Properties"])
    given.pop("ServiceToken")
    properties = stack.resolver.resolve(given)

    def accepted(size: int) -> bool:
        return check_properties({**properties, "RepositoryNodeSelectors": selector_of(size)}) is None

    low, high = 0, 4096
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if accepted(middle) else (low, middle)

    created = Stack({**parameters, "RepositoryNodeSelectors": selector_of(low)}).create()
    assert created.environment("WarmPlannerFunction")["REPOSITORY_NODE_SELECTORS"] == selector_of(low)
    # Another stack of the same name's length (the stack's names grow with it): the first's log groups are taken.
    with pytest.raises(StackRefusedError, match="ValidateConfiguration failed"):
        Stack({**parameters, "RepositoryNodeSelectors": selector_of(high)}, name="eks-image-prefetcx").create()


def test_the_function_answers_cloudformation_failed_on_update_and_success_on_delete(
    aws_mock: None, endpoint: CloudFormationEndpoint
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
