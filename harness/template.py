"""Reads template.yaml, the single source of the document, the event patterns and the resources, for the harness
and the tests."""

from __future__ import annotations

import functools
import re
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


# Pseudo parameters where a caller gives none: the tests' account and region.
DEFAULT_PSEUDO = {
    "AWS::Region": "us-east-1",
    "AWS::AccountId": "123456789012",
    "AWS::Partition": "aws",
    "AWS::StackName": "eks-image-prefetch",
    "AWS::URLSuffix": "amazonaws.com",
}


def resolve(value: Any, parameters: dict[str, Any]) -> Any:
    """``value`` with its intrinsic functions resolved against these parameter values (and resource stand-ins among
    them), by the one Resolver."""
    return Resolver(parameters, DEFAULT_PSEUDO).resolve(value)


def parameter_values(**overrides: Any) -> dict[str, Any]:
    """The parameters as a deployment with these overrides gets them, checked as CloudFormation checks them (a test
    cluster and repository for the required ones), and stand-ins named after the resources for their !Ref (and a
    launch template's version numbers for its !GetAtt)."""
    given = {"ClusterName": "ml-prod", "RepositoryNames": "ml/trainer"}
    given.update({name: ",".join(v) if isinstance(v, list) else str(v) for name, v in overrides.items()})
    values = deployment_parameters(given)
    for logical_id, resource_ in template()["Resources"].items():
        values.setdefault(logical_id, f"stand-in-{logical_id}")
        # A number where a number is read: a created launch template's first version is 1 (its !GetAtt).
        if resource_["Type"] == "AWS::EC2::LaunchTemplate":
            for attribute in ("LatestVersionNumber", "DefaultVersionNumber"):
                values.setdefault(f"{logical_id}.{attribute}", "1")
    return values


def function_environment(function: str, **overrides: Any) -> dict[str, str]:
    """The environment CloudFormation would give the function (Globals, then its own), resolved with
    ``parameter_values(**overrides)``, plus the region Lambda sets."""
    values = parameter_values(**overrides)
    variables = {
        **template()["Globals"]["Function"]["Environment"]["Variables"],
        **resource(function)["Properties"].get("Environment", {}).get("Variables", {}),
    }
    return {
        "AWS_REGION": DEFAULT_PSEUDO["AWS::Region"],
        **{name: str(resolve(value, values)) for name, value in variables.items()},
    }


# --- Parameters, conditions and intrinsic functions, as CloudFormation resolves them ---------------------------------


class Unresolved(LookupError):
    """A reference to a resource that has not been created yet (the caller creates it later)."""


def deployment_parameters(overrides: dict[str, str] | None = None) -> dict[str, Any]:
    """The template's parameters with their defaults and the overrides, checked as CloudFormation checks them (the
    emulated stack's, and parameter_values' for the tests).

    Values are strings (as !Ref gives them, Number included); a CommaDelimitedList is a list.
    """
    overrides = dict(overrides or {})
    declared = template()["Parameters"]
    unknown = set(overrides) - set(declared)
    if unknown:
        raise ValueError(f"unknown parameters: {sorted(unknown)}")
    values: dict[str, Any] = {}
    for name, spec in declared.items():
        if name in overrides:
            raw = str(overrides[name])
        elif "Default" in spec:
            raw = str(spec["Default"])
        else:
            raise ValueError(f"parameter {name} needs a value (no default)")
        _check_parameter(name, spec, raw)
        values[name] = [item.strip() for item in raw.split(",")] if spec["Type"] == "CommaDelimitedList" else raw
    return values


def _check_parameter(name: str, spec: dict[str, Any], raw: str) -> None:
    pattern = spec.get("AllowedPattern")
    # CloudFormation checks a CommaDelimitedList's AllowedPattern on each item.
    items = [item.strip() for item in raw.split(",")] if spec["Type"] == "CommaDelimitedList" else [raw]
    for item in items:
        if pattern is not None and not re.fullmatch(pattern, item):
            raise ValueError(f"parameter {name}={item!r} does not match AllowedPattern {pattern}")
    allowed = spec.get("AllowedValues")
    if allowed is not None and raw not in {str(value) for value in allowed}:
        raise ValueError(f"parameter {name}={raw!r} is not one of {allowed}")
    if spec["Type"] == "Number":
        number = float(raw)
        if "MinValue" in spec and number < float(spec["MinValue"]):
            raise ValueError(f"parameter {name}={raw} is below MinValue {spec['MinValue']}")
        if "MaxValue" in spec and number > float(spec["MaxValue"]):
            raise ValueError(f"parameter {name}={raw} is above MaxValue {spec['MaxValue']}")


class Resolver:
    """!Ref, !Sub, !If, !Join, !GetAtt, !Equals, !Select, !Split of parameters, pseudo parameters, conditions and
    the resources created so far (``refs``: logical id -> Ref value; ``attributes``: (logical id, name) -> value)."""

    def __init__(self, parameters: dict[str, Any], pseudo: dict[str, str]) -> None:
        self.parameters = parameters
        self.pseudo = pseudo
        self.refs: dict[str, Any] = {}
        self.attributes: dict[tuple[str, str], Any] = {}
        self._conditions: dict[str, bool] = {}

    def condition(self, name: str) -> bool:
        """A condition of the template, evaluated on first use (a caller may give only the parameters it needs)."""
        if name not in self._conditions:
            self._conditions[name] = bool(self.resolve(template()["Conditions"][name]))
        return self._conditions[name]

    def ref(self, name: str) -> Any:
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        if name in self.refs:
            return self.refs[name]
        if name in template()["Resources"]:
            raise Unresolved(name)
        raise KeyError(f"!Ref {name}: no such parameter or resource")

    def get_att(self, logical_id: str, attribute: str) -> Any:
        if (logical_id, attribute) in self.attributes:
            return self.attributes[(logical_id, attribute)]
        if f"{logical_id}.{attribute}" in self.parameters:  # a stand-in of parameter_values
            return self.parameters[f"{logical_id}.{attribute}"]
        if logical_id in self.refs:
            # Created, but not emulated (alarms, topics...): a placeholder nothing here reads.
            return f"{self.refs[logical_id]}.{attribute}"
        if logical_id in template()["Resources"]:
            raise Unresolved(f"{logical_id}.{attribute}")
        raise KeyError(f"!GetAtt {logical_id}.{attribute}: no such resource")

    def _sub(self, text: str, variables: dict[str, Any]) -> str:
        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in variables:
                return str(variables[name])
            if "." in name and not name.startswith("AWS::"):
                return str(self.get_att(*name.split(".", 1)))
            return str(self.ref(name))

        return re.sub(r"\$\{([^}!]+)\}", one, text)

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.resolve(item) for item in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((key, argument),) = value.items()
            function = self._functions().get(key)
            if function is not None:
                return function(argument)
        return {key: self.resolve(item) for key, item in value.items()}

    def _functions(self) -> dict[str, Any]:
        return {
            "Ref": self.ref,
            "Fn::GetAtt": self._get_att,
            "Fn::Sub": self._fn_sub,
            "Fn::If": self._fn_if,
            "Fn::Join": lambda arg: arg[0].join(str(item) for item in self.resolve(arg[1])),
            "Fn::Equals": lambda arg: str(self.resolve(arg[0])) == str(self.resolve(arg[1])),
            "Fn::Not": lambda arg: not self.resolve(arg[0]),
            "Fn::And": lambda arg: all(self.resolve(arg)),
            "Fn::Or": lambda arg: any(self.resolve(arg)),
            "Condition": self.condition,
            "Fn::Select": lambda arg: self.resolve(arg[1])[int(self.resolve(arg[0]))],
            "Fn::Split": lambda arg: self.resolve(arg[1]).split(arg[0]),
        }

    def _get_att(self, argument: Any) -> Any:
        logical_id, attribute = argument if isinstance(argument, list) else argument.split(".", 1)
        return self.get_att(logical_id, attribute)

    def _fn_sub(self, argument: Any) -> str:
        if isinstance(argument, list):
            text, variables = argument
            return self._sub(text, {name: self.resolve(item) for name, item in variables.items()})
        return self._sub(argument, {})

    def _fn_if(self, argument: list[Any]) -> Any:
        condition, when_true, when_false = argument
        return self.resolve(when_true if self.condition(condition) else when_false)
