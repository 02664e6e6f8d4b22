"""Lambda's 4 KB of environment variables per function, against what the stack's parameters put there.

Lambda refuses a function whose environment variables take more than 4 KB in all (its quota "Function environment
variables", not adjustable): the deploy then fails on the function, with Lambda's message, after everything else passed.
The parameters that carry free text (``CLUSTER_PARAMETERS``, and ``WarmNodeAmi`` for the warm planner) go verbatim into
the functions' environments; the deploy-time check is given them and measures them exactly. Everything else there is
bounded by the template: numbers, fixed names, and the stack's resource names, which grow with the stack's name.
``OtherVariables`` models those, per function, as ``base + per_stack_character x len(stack name)``, each at its largest
(every other parameter at its longest, generated names of ``<stack>-<logical id>-<12 characters>``);
tests/unit/test_environment_budget.py measures them from template.yaml and holds the figures here to them.

Sizes are measured as Lambda's refusal shows them ("String measured:" and the variables as compact JSON: names, values,
quotes and escapes). That counts more than the sum of names and values (the measure Lambda's newer message names), so
the check accepts nothing either measure puts over 4 KB.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

LAMBDA_ENVIRONMENT_BYTES = 4096

# Each function's variable -> the parameter (the check's property) whose value it carries verbatim.
CLUSTER_PARAMETERS = {
    "CLUSTER_NAME": "ClusterName",
    "REPOSITORY_NAMES": "RepositoryNames",
    "NODE_TAG_KEY": "NodeTagKey",
    "NODE_TAG_VALUE": "NodeTagValue",
    "TAG_FILTER": "TagFilter",
    "REPOSITORY_NODE_SELECTORS": "RepositoryNodeSelectors",
}
WARM_PLANNER_PARAMETERS = {**CLUSTER_PARAMETERS, "WARM_NODE_AMI": "WarmNodeAmi"}


@dataclass(frozen=True)
class OtherVariables:
    """The bytes of a function's environment besides the parameters measured: at most this, for a stack name of
    this length."""

    base: int
    per_stack_character: int

    def bytes_for(self, stack_name: str) -> int:
        return self.base + self.per_stack_character * len(stack_name)


@dataclass(frozen=True)
class FunctionEnvironment:
    service: str
    parameters: Mapping[str, str]  # variable -> parameter
    other: OtherVariables
    # The function exists only when this property is not empty (the warm planner: WarmVolumes).
    only_with: str | None = None


FUNCTIONS = {
    "EcrPushFunction": FunctionEnvironment("ecr-push", CLUSTER_PARAMETERS, OtherVariables(627, 3)),
    "NodeLaunchFunction": FunctionEnvironment("node-launch", CLUSTER_PARAMETERS, OtherVariables(811, 3)),
    "StatusFunction": FunctionEnvironment("status", CLUSTER_PARAMETERS, OtherVariables(835, 4)),
    "WarmPlannerFunction": FunctionEnvironment(
        "warm-planner", WARM_PLANNER_PARAMETERS, OtherVariables(938, 6), only_with="WarmNodeAmi"
    ),
}


def environment_bytes(variables: Mapping[str, str]) -> int:
    """The size of these variables as Lambda measures a function's environment."""
    return len(json.dumps(dict(variables), separators=(",", ":"), ensure_ascii=False).encode())


def environment_problem(properties: Mapping[str, Any]) -> str | None:
    """Why a function could not be deployed with these parameter values (the check's properties, ``StackName``
    among them), naming the tightest function, its budget and what takes it; None when every function fits."""
    stack_name = str(properties.get("StackName", ""))
    overflows = []
    for function in FUNCTIONS.values():
        if function.only_with is not None and not properties.get(function.only_with):
            continue
        values = {variable: str(properties.get(parameter, "")) for variable, parameter in function.parameters.items()}
        taken = environment_bytes(values)
        left = LAMBDA_ENVIRONMENT_BYTES - function.other.bytes_for(stack_name)
        if taken > left:
            overflows.append((taken - left, function, taken, left, values))
    if not overflows:
        return None
    _over, function, taken, left, values = max(overflows, key=lambda overflow: overflow[0])
    # Each parameter's share: its member of the JSON, without the braces.
    sizes = sorted(
        ((function.parameters[name], environment_bytes({name: value}) - 2) for name, value in values.items()),
        key=lambda share: -share[1],
    )
    largest = ", ".join(f"{parameter} {size:,}" for parameter, size in sizes[:3])
    return (
        f"the parameters the functions carry take {taken:,} bytes of the {function.service} function's environment "
        f"({largest}; measured as Lambda does, as JSON), over the {left:,} its other variables leave of Lambda's "
        f"{LAMBDA_ENVIRONMENT_BYTES:,} bytes per function: shorten RepositoryNodeSelectors (fewer or shorter tag "
        "values) or RepositoryNames (split the repositories over two stacks)"
    )
