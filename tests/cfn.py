"""Reads template.yaml, the single source of the document and the event patterns, for the tests."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml

TEMPLATE = Path(__file__).resolve().parent.parent / "template.yaml"


class Intrinsic(dict):
    """A CloudFormation short-form function (!Ref, !Sub, ...) kept as {"Fn::X": value}."""


def _construct(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> Intrinsic:
    name = "Ref" if tag_suffix == "Ref" else f"Fn::{tag_suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if tag_suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return Intrinsic({name: value})


class _CfnLoader(yaml.SafeLoader):
    pass


_CfnLoader.add_multi_constructor("!", _construct)


@functools.cache
def template() -> dict[str, Any]:
    return yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass


def resource(logical_id: str) -> dict[str, Any]:
    return template()["Resources"][logical_id]


def document_content() -> dict[str, Any]:
    return resource("PrefetchDocument")["Properties"]["Content"]


def document_script() -> str:
    (step,) = document_content()["mainSteps"]
    (script,) = step["inputs"]["runCommand"]
    return script


def resolve(value: Any, parameters: dict[str, Any]) -> Any:
    """Resolve !Ref (to the given values), !Join, and !If on !Equals conditions, recursively: enough for event
    patterns and the functions' environment."""
    if isinstance(value, dict):
        if set(value) == {"Ref"}:
            return parameters[value["Ref"]]
        if set(value) == {"Fn::Join"}:
            delimiter, items = value["Fn::Join"]
            return delimiter.join(str(item) for item in resolve(items, parameters))
        if set(value) == {"Fn::If"}:
            condition, if_true, if_false = value["Fn::If"]
            left, right = resolve(template()["Conditions"][condition]["Fn::Equals"], parameters)
            return resolve(if_true if left == right else if_false, parameters)
        return {key: resolve(item, parameters) for key, item in value.items()}
    if isinstance(value, list):
        return [resolve(item, parameters) for item in value]
    return value


def parameter_values(**overrides: Any) -> dict[str, Any]:
    """Every parameter at its default (a test cluster and repository for the required ones), stand-ins named after
    the resources for their !Ref, and the overrides."""
    parameters = template()["Parameters"]
    values: dict[str, Any] = {name: spec.get("Default") for name, spec in parameters.items()}
    values.update(ClusterName="ml-prod", RepositoryNames=["ml/trainer"])
    for logical_id in template()["Resources"]:
        values.setdefault(logical_id, f"stand-in-{logical_id}")
    values.update(overrides)
    return values


def function_environment(function: str, **overrides: Any) -> dict[str, str]:
    """The environment CloudFormation would give the function (Globals, then its own), resolved with
    ``parameter_values(**overrides)``, plus the region Lambda sets."""
    values = parameter_values(**overrides)
    variables = {
        **template()["Globals"]["Function"]["Environment"]["Variables"],
        **resource(function)["Properties"].get("Environment", {}).get("Variables", {}),
    }
    return {"AWS_REGION": "us-east-1", **{name: str(resolve(value, values)) for name, value in variables.items()}}
