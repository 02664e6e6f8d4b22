"""Thin adapters over boto3: the only module that talks to AWS.

Clients are created on first use, so tests (moto, Stubber) take effect, and share one retry policy: botocore's
adaptive mode retries throttling and transient faults with backoff and client-side rate limiting.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from typing import Any

import boto3
from botocore.config import Config

RETRY_CONFIG = Config(
    retries={"mode": "adaptive", "max_attempts": 8},
    connect_timeout=5,
    read_timeout=20,
)


@functools.cache
def client(service: str) -> Any:
    return boto3.client(service, config=RETRY_CONFIG)


def reset_clients() -> None:
    """Forget cached clients (tests start each AWS mock with new ones)."""
    client.cache_clear()


def describe_tagged_images(repository: str, ecr: Any = None) -> Iterator[Mapping[str, Any]]:
    """Every tagged image of a repository, page by page (ECR neither sorts nor returns more than 1,000 a page)."""
    paginator = (ecr or client("ecr")).get_paginator("describe_images")
    pages = paginator.paginate(
        repositoryName=repository,
        filter={"tagStatus": "TAGGED"},
        PaginationConfig={"PageSize": 1000},
    )
    for page in pages:
        yield from page["imageDetails"]


def send_command(request: Mapping[str, Any], ssm: Any = None) -> str:
    """Send one Run Command and return its id."""
    response = (ssm or client("ssm")).send_command(**request)
    return response["Command"]["CommandId"]
