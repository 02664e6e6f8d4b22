"""The deploy check's model of Lambda's 4 KB per function (eks_prefetch.deploy.environment_budget), held to
template.yaml: the check is given exactly what each function's environment carries of the parameters, and what the
rest of each environment takes, at its largest, is what the model says.

The rest is measured at its largest: every other parameter that reaches an environment at its longest (a number at
its MaxValue, the longest of AllowedValues), CloudFormation's generated names as ``<stack>-<logical id>-<12
characters>`` within the resource type's name limit, the longest partition and region names."""

from __future__ import annotations

import json
from typing import Any

import pytest

from eks_prefetch.deploy.environment_budget import (
    FUNCTIONS,
    LAMBDA_ENVIRONMENT_BYTES,
    environment_bytes,
    environment_problem,
)
from harness import template as cfn

PARTITION, REGION, ACCOUNT = "aws-us-gov", "ap-southeast-7", "123456789012"
# Names CloudFormation generates, at most as long as the type allows.
GENERATED_NAME_LIMITS = {"AWS::SSM::Document": 128, "AWS::DynamoDB::Table": 255}
# Attributes that reach an environment, at their longest (a launch template's version number: 10 digits bound it).
LONGEST_ATTRIBUTES = {("WarmLaunchTemplate", "LatestVersionNumber"): "9" * 10}
# Parameters without MaxValue or AllowedValues whose patterns bound them: their longest value.
BOUNDED_BY_PATTERN = {"MaxConcurrency": "999999", "MaxErrors": "999999"}
MEASURED = {parameter for function in FUNCTIONS.values() for parameter in function.parameters.values()}


class WorstCase(cfn.Resolver):
    """Resolves !Ref of a resource to the longest physical id CloudFormation gives it for this stack name."""

    def ref(self, name: str) -> Any:
        resources = cfn.template()["Resources"]
        if name not in resources or name in self.refs:
            return super().ref(name)
        resource = resources[name]
        kind, properties = resource["Type"], resource.get("Properties") or {}
        if kind == "AWS::Logs::LogGroup":
            return self.resolve(properties["LogGroupName"])
        if kind == "AWS::SSM::Parameter":
            return self.resolve(properties["Name"])
        if kind == "AWS::Serverless::StateMachine":
            return f"arn:{PARTITION}:states:{REGION}:{ACCOUNT}:stateMachine:{self.resolve(properties['Name'])}"
        if kind == "AWS::EC2::LaunchTemplate":
            return "lt-" + "0" * 17
        if kind in GENERATED_NAME_LIMITS and "Name" not in properties and "TableName" not in properties:
            return f"{self.pseudo['AWS::StackName']}-{name}-{'X' * 12}"[-GENERATED_NAME_LIMITS[kind] :]
        raise AssertionError(f"no longest value known for !Ref {name} ({kind}) in a function's environment: add it")

    def get_att(self, logical_id: str, attribute: str) -> Any:
        if (logical_id, attribute) in LONGEST_ATTRIBUTES:
            return LONGEST_ATTRIBUTES[(logical_id, attribute)]
        raise AssertionError(f"no longest value known for !GetAtt {logical_id}.{attribute} in an environment: add it")


def parameters_at_longest(tracing: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, spec in cfn.template()["Parameters"].items():
        if name in MEASURED:
            values[name] = [""] if spec["Type"] == "CommaDelimitedList" else ""
        elif "AllowedValues" in spec:
            values[name] = max((str(value) for value in spec["AllowedValues"]), key=len)
        elif spec["Type"] == "Number" and "MaxValue" in spec:
            values[name] = str(spec["MaxValue"])
        elif name in BOUNDED_BY_PATTERN:
            values[name] = BOUNDED_BY_PATTERN[name]
        else:
            values[name] = None  # unbounded: must not reach an environment (see below)
    values.update(EnableTracing=tracing, WarmVolumes="true")
    return values


def function_variables(function: str) -> dict[str, Any]:
    return {
        **cfn.template()["Globals"]["Function"]["Environment"]["Variables"],
        **cfn.resource(function)["Properties"]["Environment"]["Variables"],
    }


def other_bytes(function: str, stack_name: str) -> int:
    """What the function's environment takes besides the measured parameters, at its largest for this stack name."""
    largest = 0
    for tracing in ("true", "false"):
        pseudo = {"AWS::Region": REGION, "AWS::AccountId": ACCOUNT, "AWS::Partition": PARTITION}
        resolver = WorstCase(parameters_at_longest(tracing), {**pseudo, "AWS::StackName": stack_name})
        environment = {name: resolver.resolve(value) for name, value in function_variables(function).items()}
        unbounded = [name for name, value in environment.items() if value is None or "None" in str(value)]
        assert unbounded == [], f"{function}: unbounded parameters reach {unbounded}: measure them in the check"
        environment = {name: str(value) for name, value in environment.items()}
        measured = {name: environment[name] for name in FUNCTIONS[function].parameters}
        largest = max(largest, environment_bytes(environment) - environment_bytes(measured))
    return largest


def test_every_function_carrying_a_parameter_of_unbounded_length_is_modelled():
    """(The unpin function carries only the node tag, which the parameters' patterns bound to 384 characters.)"""
    unbounded = {"REPOSITORY_NAMES", "TAG_FILTER", "REPOSITORY_NODE_SELECTORS", "WARM_NODE_AMI"}
    carrying = {
        name
        for name, resource in cfn.template()["Resources"].items()
        if resource["Type"] == "AWS::Serverless::Function" and set(function_variables(name)) & unbounded
    }
    assert carrying == set(FUNCTIONS)


@pytest.mark.parametrize("function", FUNCTIONS)
def test_the_model_of_each_functions_other_variables_is_what_the_template_takes(function: str):
    """At least what the template takes for any stack name (CloudFormation's own limit is 128 characters), and
    exactly that for the usual lengths, so that the budget the check states is neither unsafe nor short."""
    model = FUNCTIONS[function].other
    at = {length: other_bytes(function, "s" * length) for length in (1, 18, 40, 41, 64, 100, 128)}
    exact = f"OtherVariables({at[40] - 40 * (at[41] - at[40])}, {at[41] - at[40]})"

    assert all(model.bytes_for("s" * length) >= taken for length, taken in at.items()), exact
    assert (model.bytes_for("s" * 18), model.bytes_for("s" * 40)) == (at[18], at[40]), exact


PARAMETER_SETS = [
    {},
    {"NodeTagValue": "owned", "NodeTagKey": "kubernetes.io/cluster/ml-prod"},
    {"WarmVolumes": "true", "WarmBuilderSubnetId": "subnet-0123456789abcdef0", "TagFilter": r"^v\d+\.\d+$"},
    {"RepositoryNames": "ml/trainer,ml/inference", "RepositoryNodeSelectors": json.dumps({"ml/trainer": {"a": "b"}})},
]


@pytest.mark.parametrize("overrides", PARAMETER_SETS)
def test_the_check_is_given_exactly_what_each_function_carries(overrides: dict[str, str]):
    values = cfn.parameter_values(**overrides)
    given = dict(cfn.resource("ValidateConfiguration")["Properties"])
    given.pop("ServiceToken")
    properties = cfn.resolve(given, values)
    functions = cfn.template()["Resources"]
    resolver = cfn.Resolver(values, cfn.DEFAULT_PSEUDO)

    assert properties["StackName"] == cfn.DEFAULT_PSEUDO["AWS::StackName"]
    for name, function in FUNCTIONS.items():
        exists = resolver.condition(functions[name]["Condition"]) if "Condition" in functions[name] else True
        assert exists == (function.only_with is None or bool(properties[function.only_with])), name
        if not exists:
            continue
        environment = cfn.function_environment(name, **overrides)
        for variable, parameter in function.parameters.items():
            assert environment[variable] == properties[parameter], (name, variable)


def test_the_budget_is_stated_and_the_largest_share_named():
    properties = {
        "StackName": "eks-image-prefetch",
        "ClusterName": "ml-prod",
        "NodeTagKey": "eks:cluster-name",
        "NodeTagValue": "ml-prod",
        "TagFilter": "^(?!sha256-).+$",
        "RepositoryNames": "ml/trainer",
        "RepositoryNodeSelectors": json.dumps({"ml/trainer": {"pool": [f"gpu-{n:04}" for n in range(50)]}}),
        "WarmNodeAmi": "",
    }
    assert environment_problem(properties) is None
    properties["RepositoryNodeSelectors"] = json.dumps(
        {"ml/trainer": {f"k{k}": [f"node-group-{k}-{n:04}" for n in range(50)] for k in range(4)}}
    )

    problem = environment_problem(properties)

    status = FUNCTIONS["StatusFunction"].other.bytes_for("eks-image-prefetch")
    assert problem is not None and "\n" not in problem
    assert problem.startswith("the parameters the functions carry take ")
    assert "of the status function's environment (RepositoryNodeSelectors " in problem
    left = LAMBDA_ENVIRONMENT_BYTES - status
    assert f"over the {left:,} its other variables leave of Lambda's 4,096 bytes per function" in problem
    assert problem.endswith("or RepositoryNames (split the repositories over two stacks)")
