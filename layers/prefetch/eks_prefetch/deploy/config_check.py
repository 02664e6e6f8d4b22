"""The deploy-time check of what CloudFormation cannot validate itself (a JSON parameter), as a custom resource.

CloudFormation checks a parameter's pattern, not its meaning: an invalid ``RepositoryNodeSelectors`` would deploy,
then fail every event in ``Settings`` and fill the dead-letter queues. The ``ValidateConfiguration`` custom resource
runs the functions' own parser on the values the stack is given (selectors and NodeTagKey as SSM's Targets accept them),
measures what they take of each function's environment against Lambda's 4 KB (``environment_budget``), and answers
FAILED with the problem as the reason: ``sam deploy`` fails on it, and the functions (which depend on it) are never
created or updated with that value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from eks_prefetch.deploy.environment_budget import environment_problem
from eks_prefetch.node_selectors import SelectorError, parse_node_selectors, target_key_problem


@dataclass(frozen=True)
class CheckOutcome:
    status: Literal["SUCCESS", "FAILED"]
    reason: str
    physical_resource_id: str


def check_properties(properties: Mapping[str, Any]) -> str | None:
    """The problem with the configuration the resource's properties carry, or None when the functions accept it."""
    watched = [name.strip() for name in str(properties.get("RepositoryNames", "")).split(",") if name.strip()]
    node_tag_key = str(properties.get("NodeTagKey", ""))
    problem = target_key_problem(node_tag_key)
    if problem:
        return f"NodeTagKey {node_tag_key!r} {problem}"
    try:
        parse_node_selectors(str(properties.get("RepositoryNodeSelectors", "")), watched, node_tag_key)
    except SelectorError as error:
        return str(error)
    return environment_problem(properties)


def on_request(
    request_type: str, properties: Mapping[str, Any], physical_id: str | None, logical_id: str
) -> CheckOutcome:
    """Create and Update: SUCCESS only for a valid configuration. Delete: always SUCCESS (a rollback of a refused
    create deletes the resource, and nothing must hold a deletion)."""
    # Stable across updates: a new id would make CloudFormation delete the "old" resource.
    resource_id = physical_id or logical_id
    if request_type == "Delete":
        return CheckOutcome("SUCCESS", "nothing to delete", resource_id)
    problem = check_properties(properties)
    if problem is not None:
        return CheckOutcome("FAILED", f"invalid configuration: {problem}"[:1000], resource_id)
    return CheckOutcome("SUCCESS", "configuration valid", resource_id)
