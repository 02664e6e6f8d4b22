"""Auto Scaling: which launch template versions groups launch."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from eks_prefetch.aws import clients


def launch_template_versions_launched(launch_template_id: str, autoscaling: Any = None) -> set[str]:
    """The versions of the launch template that some Auto Scaling group names (a number, $Latest or $Default), in
    its launch template or its mixed instances policy (overrides included)."""
    paginator = (autoscaling or clients.client("autoscaling")).get_paginator("describe_auto_scaling_groups")
    return {
        str(spec.get("Version") or "$Default")
        for page in paginator.paginate()
        for group in page["AutoScalingGroups"]
        for spec in _launch_template_specifications(group)
        if spec.get("LaunchTemplateId") == launch_template_id
    }


def _launch_template_specifications(group: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    if "LaunchTemplate" in group:
        yield group["LaunchTemplate"]
    mixed = group.get("MixedInstancesPolicy", {}).get("LaunchTemplate", {})
    if "LaunchTemplateSpecification" in mixed:
        yield mixed["LaunchTemplateSpecification"]
    for override in mixed.get("Overrides", []):
        if "LaunchTemplateSpecification" in override:
            yield override["LaunchTemplateSpecification"]
