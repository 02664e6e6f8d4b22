r"""Per-repository node selectors: which cluster nodes a watched repository's images go to, by EC2 tags.

``RepositoryNodeSelectors`` is a JSON object from a watched repository to tag conditions, e.g.
``{"ml/trainer": {"karpenter.sh/nodepool": ["gpu-a", "gpu-b"]}}``. The conditions of a repository are ANDed, the
values of one key ORed, all of them ANDed with the cluster tag: exactly what SSM Run Command ``Targets`` mean, so that
a push stays one command whatever the fleet. A repository that is not listed goes to every cluster node.

One parser for the functions (``Settings``) and the deploy-time check (the validating custom resource), so that a
selector the functions would refuse never gets past ``sam deploy``. It refuses what SSM's SendCommand would refuse in
``Targets`` (botocore's SSM model: at most 5 targets of at most 50 values; a key of 1 to 163 characters matching
``^[\p{L}\p{Z}\p{N}_.:/=\-@]*$``, which ``tag:<key>`` must match whole), within what EC2 tags can be (keys up to 128
characters, values up to 256). SSM constrains no value's characters. ``target_key_problem`` applies the same rule to
``NodeTagKey``.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Collection, Mapping
from typing import Any

# SSM allows 5 Targets per command; one is the cluster tag.
MAX_CONDITIONS = 4
# SSM's limit of values in one target.
MAX_VALUES = 50
# EC2 tag limits (a tag target's key, "tag:" and 128 characters, is within SSM's 163).
MAX_KEY_LENGTH = 128
MAX_VALUE_LENGTH = 256
# SSM's TargetKey pattern is letters, separators (spaces) and numbers of any script (\p{L}\p{Z}\p{N}), and these.
_TARGET_KEY_SYMBOLS = frozenset("_.:/=-@")

Selector = Mapping[str, tuple[str, ...]]


class SelectorError(ValueError):
    """RepositoryNodeSelectors cannot be used as given; the message names the problem."""


def parse_node_selectors(
    text: str, watched: Collection[str], node_tag_key: str
) -> dict[str, dict[str, tuple[str, ...]]]:
    """The selectors, by repository (values as tuples); raises SelectorError naming the first problem found."""
    if not text or not text.strip():
        return {}
    try:
        raw = json.loads(text)
    except ValueError as error:
        raise SelectorError(f"RepositoryNodeSelectors is not valid JSON: {error}") from error
    if not isinstance(raw, dict):
        raise SelectorError("RepositoryNodeSelectors must be a JSON object from repository to tag conditions")
    selectors: dict[str, dict[str, tuple[str, ...]]] = {}
    for repository, conditions in raw.items():
        where = f"RepositoryNodeSelectors[{repository!r}]"
        if repository not in watched:
            raise SelectorError(f"{where}: {repository!r} is not one of RepositoryNames ({', '.join(watched)})")
        if not isinstance(conditions, dict) or not conditions:
            raise SelectorError(f"{where} must be a non-empty object of tag key -> value or list of values")
        if len(conditions) > MAX_CONDITIONS:
            raise SelectorError(
                f"{where} has {len(conditions)} tag keys, at most {MAX_CONDITIONS} (SSM allows 5 targets per "
                "command, one is the cluster tag)"
            )
        selectors[repository] = {key: _values(where, key, value, node_tag_key) for key, value in conditions.items()}
    return selectors


def target_key_problem(key: str) -> str | None:
    """Why SSM's SendCommand would refuse ``tag:<key>`` in its Targets (or no EC2 tag could have that key), or None."""
    if not key or len(key) > MAX_KEY_LENGTH:
        return f"must be 1 to {MAX_KEY_LENGTH} characters (EC2's limit of a tag key)"
    refused = sorted({char for char in key if not _target_key_character(char)})
    if refused:
        return (
            f"has {' '.join(repr(char) for char in refused)}, which SSM Run Command's Targets refuse in a tag key "
            "(letters, digits, spaces and _ . : / = - @ only): every command sent by that tag would fail"
        )
    return None


def _target_key_character(char: str) -> bool:
    return unicodedata.category(char)[0] in "LZN" or char in _TARGET_KEY_SYMBOLS


def _values(where: str, key: str, value: Any, node_tag_key: str) -> tuple[str, ...]:
    problem = target_key_problem(key)
    if problem:
        raise SelectorError(f"{where}: tag key {key!r} {problem}; rename the tag, or select by another one")
    if key == node_tag_key:
        raise SelectorError(f"{where}: tag key {key!r} is NodeTagKey, which every command already targets")
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(item, str) for item in values):
        raise SelectorError(f"{where}[{key!r}] must be a string or a non-empty list of strings")
    if len(values) > MAX_VALUES:
        raise SelectorError(f"{where}[{key!r}] has {len(values)} values, at most {MAX_VALUES} (SSM's limit)")
    bad = [item for item in values if not item or len(item) > MAX_VALUE_LENGTH]
    if bad:
        raise SelectorError(f"{where}[{key!r}]: tag values must be 1 to {MAX_VALUE_LENGTH} characters, not {bad}")
    return tuple(dict.fromkeys(values))


def matches(selector: Selector, tags: Mapping[str, str]) -> bool:
    """Whether a node with these tags is selected: every key present with one of its values (an empty selector
    selects every node)."""
    return all(tags.get(key) in values for key, values in selector.items())


def tags_of(instance: Mapping[str, Any]) -> dict[str, str]:
    """An EC2 instance description's tags as a mapping."""
    return {tag["Key"]: tag.get("Value", "") for tag in instance.get("Tags") or ()}
