"""Thin adapters over boto3, one module per service: the only package that talks to AWS.

Every client shares one retry and deadline policy (``clients``). The adapters raise the application's own errors
(``errors``) where the logic above them must tell one failure from another, so that no module outside this package
imports botocore or compares AWS error codes.
"""

from eks_prefetch.aws import autoscaling, clients, dynamodb, ec2, ecr, errors, iam, sfn, sqs, ssm, stack
from eks_prefetch.aws.clients import (
    RESERVE_SECONDS,
    WORST_ATTEMPT_SECONDS,
    client,
    is_ambiguous_error,
    reset_clients,
    seconds_left,
    set_deadline,
    within_invocation_time,
)
from eks_prefetch.aws.errors import (
    AWS_ERRORS,
    CommandRefusedError,
    InstanceNotAcceptedError,
    RepositoryNotFoundError,
)

__all__ = [
    "AWS_ERRORS",
    "RESERVE_SECONDS",
    "WORST_ATTEMPT_SECONDS",
    "CommandRefusedError",
    "InstanceNotAcceptedError",
    "RepositoryNotFoundError",
    "autoscaling",
    "client",
    "clients",
    "dynamodb",
    "ec2",
    "ecr",
    "errors",
    "iam",
    "is_ambiguous_error",
    "reset_clients",
    "seconds_left",
    "set_deadline",
    "sfn",
    "sqs",
    "ssm",
    "stack",
    "within_invocation_time",
]
