"""Reads template.yaml, the single source of the document, the event patterns and the resources, for the harness
and the tests."""

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
    """Resolve !Ref to the given parameter values, recursively (enough for event patterns)."""
    if isinstance(value, dict):
        if set(value) == {"Ref"}:
            return parameters[value["Ref"]]
        return {key: resolve(item, parameters) for key, item in value.items()}
    if isinstance(value, list):
        return [resolve(item, parameters) for item in value]
    return value
