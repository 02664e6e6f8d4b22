"""harness.template: parameters checked as CloudFormation checks them, and the intrinsic functions resolved."""

from __future__ import annotations

import pytest

from harness.template import Resolver, Unresolved, deployment_parameters, template

PSEUDO = {"AWS::Region": "us-east-1", "AWS::AccountId": "123456789012", "AWS::Partition": "aws", "AWS::StackName": "s"}


def test_defaults_overrides_and_lists() -> None:
    values = deployment_parameters({"ClusterName": "demo", "RepositoryNames": "ml/a, ml/b"})
    assert values["RepositoryNames"] == ["ml/a", "ml/b"]
    assert values["MaxErrors"] == str(template()["Parameters"]["MaxErrors"]["Default"])


@pytest.mark.parametrize(
    "overrides",
    [
        {"ClusterName": "bad name!", "RepositoryNames": "ml/a"},
        {"ClusterName": "demo", "RepositoryNames": "ml/a", "PinImages": "maybe"},
        {"ClusterName": "demo", "RepositoryNames": "ml/a", "PinnedVersionsToKeep": "0"},
        {"ClusterName": "demo", "RepositoryNames": "ml/a", "NoSuchParameter": "x"},
        {"RepositoryNames": "ml/a"},
    ],
)
def test_values_cloudformation_would_refuse_are_refused(overrides: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        deployment_parameters(overrides)


def test_intrinsics_resolve_against_parameters_conditions_and_created_resources() -> None:
    resolver = Resolver(deployment_parameters({"ClusterName": "demo", "RepositoryNames": "ml/a,ml/b"}), PSEUDO)
    environment = template()["Resources"]["EcrPushFunction"]["Properties"]["Environment"]["Variables"]
    with pytest.raises(Unresolved):
        resolver.resolve(environment)  # the document is not created yet
    resolver.refs.update({"PrefetchDocument": "doc", "CommandOutputLogGroup": "group", "IdempotencyTable": "table"})
    resolver.refs.update(
        {logical_id: logical_id for logical_id in template()["Resources"] if logical_id not in resolver.refs}
    )
    resolved = resolver.resolve(environment)
    assert resolved["REPOSITORY_NAMES"] == "ml/a,ml/b"  # !Join
    assert resolved["NODE_TAG_VALUE"] == "demo"  # !If on an empty NodeTagValue
    assert resolved["DOCUMENT_NAME"] == "doc"  # !Ref of a resource
    assert resolver.resolve({"Fn::Sub": "arn:${AWS::Partition}:x:${AWS::Region}:${AWS::AccountId}:${ClusterName}"}) == (
        "arn:aws:x:us-east-1:123456789012:demo"
    )
    assert resolver.resolve({"Fn::Sub": ["${A}-${ClusterName}", {"A": {"Ref": "AWS::StackName"}}]}) == "s-demo"
