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
from botocore.exceptions import ClientError

from eks_prefetch.images import partition_dns_suffix

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


def image_exists(repository: str, digest: str, ecr: Any = None) -> bool:
    """Whether the repository holds an image with this digest, tagged or not."""
    try:
        (ecr or client("ecr")).describe_images(repositoryName=repository, imageIds=[{"imageDigest": digest}])
    except ClientError as error:
        if error.response["Error"]["Code"] == "ImageNotFoundException":
            return False
        raise
    return True


def send_command(request: Mapping[str, Any], ssm: Any = None) -> str:
    """Send one Run Command and return its id."""
    response = (ssm or client("ssm")).send_command(**request)
    return response["Command"]["CommandId"]


def describe_instance(instance_id: str, ec2: Any = None) -> Mapping[str, Any] | None:
    """The instance as DescribeInstances shows it, or None if EC2 does not know it (InvalidInstanceID.NotFound)."""
    try:
        response = (ec2 or client("ec2")).describe_instances(InstanceIds=[instance_id])
    except ClientError as error:
        if error.response["Error"]["Code"] == "InvalidInstanceID.NotFound":
            return None
        raise
    instances = [instance for reservation in response["Reservations"] for instance in reservation["Instances"]]
    return instances[0] if instances else None


def agent_online(instance_id: str, ssm: Any = None) -> bool:
    """Whether the instance's SSM agent has registered and is Online: until then SendCommand by id fails."""
    try:
        response = (ssm or client("ssm")).describe_instance_information(
            Filters=[{"Key": "InstanceIds", "Values": [instance_id]}],
        )
    except ClientError as error:
        # The API documents an error, rather than an empty list, for an id it does not know as a managed node.
        if error.response["Error"]["Code"] == "InvalidInstanceId":
            return False
        raise
    return any(
        info.get("InstanceId") == instance_id and info.get("PingStatus") == "Online"
        for info in response["InstanceInformationList"]
    )


def queue_url(queue_arn: str) -> str:
    """The URL of the SQS queue an ARN names (the Lambda SQS event carries only the ARN)."""
    _arn, _partition, _service, region, account, name = queue_arn.split(":", 5)
    return f"https://sqs.{region}.{partition_dns_suffix(region)}/{account}/{name}"


def change_visibility(queue_arn: str, receipt_handle: str, timeout_seconds: int, sqs: Any = None) -> None:
    """Hide a received message for timeout_seconds from now: the queue's own, Lambda-free, retry delay."""
    (sqs or client("sqs")).change_message_visibility(
        QueueUrl=queue_url(queue_arn),
        ReceiptHandle=receipt_handle,
        VisibilityTimeout=timeout_seconds,
    )
