"""Typed models of the events the functions receive (Powertools parser / pydantic)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parser import parse
from aws_lambda_powertools.utilities.parser.models import (
    CloudFormationCustomResourceCreateModel,
    CloudFormationCustomResourceDeleteModel,
    CloudFormationCustomResourceUpdateModel,
    EventBridgeModel,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from eks_prefetch.images import DIGEST_PATTERN, REPOSITORY_PATTERN, TAG_PATTERN


class EcrImageActionDetail(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="allow")

    action_type: str = Field(alias="action-type")
    result: str
    repository_name: str = Field(alias="repository-name", pattern=f"^{REPOSITORY_PATTERN}$", max_length=256)
    image_digest: str = Field(alias="image-digest", pattern=f"^{DIGEST_PATTERN}$")
    # Absent on untagged pushes: per-platform children of an index, signatures, SBOMs, SOCI indexes.
    image_tag: str | None = Field(default=None, alias="image-tag", pattern=f"^{TAG_PATTERN}$")
    manifest_media_type: str | None = Field(default=None, alias="manifest-media-type")
    artifact_media_type: str | None = Field(default=None, alias="artifact-media-type")


class EcrImageActionEvent(EventBridgeModel):
    source: Literal["aws.ecr"]
    detail_type: Literal["ECR Image Action"] = Field(alias="detail-type")
    detail: EcrImageActionDetail


# EC2 instance ids: "i-" and 8 (older) or 17 hex digits.
INSTANCE_ID_PATTERN = r"i-(?:[0-9a-f]{8}|[0-9a-f]{17})"

Ec2InstanceState = Literal["pending", "running", "stopping", "stopped", "shutting-down", "terminated"]


class Ec2StateChangeDetail(BaseModel):
    # Extra fields are allowed: AWS may add some, and they do not change what the event means.
    model_config = ConfigDict(populate_by_name=True, extra="allow")

    instance_id: str = Field(alias="instance-id", pattern=f"^{INSTANCE_ID_PATTERN}$")
    state: Ec2InstanceState


class Ec2StateChangeEvent(EventBridgeModel):
    """EC2 Instance State-change Notification. Carries no tags: those are read from the instance."""

    source: Literal["aws.ec2"]
    detail_type: Literal["EC2 Instance State-change Notification"] = Field(alias="detail-type")
    detail: Ec2StateChangeDetail


# --- Status function (issue 8) ---

# SSM command ids are UUIDs.
COMMAND_ID_PATTERN = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


class SsmInvocationStatusDetail(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="allow")

    command_id: str = Field(alias="command-id", pattern=f"^{COMMAND_ID_PATTERN}$")
    document_name: str = Field(alias="document-name", min_length=1, max_length=256)
    # Managed nodes are EC2 instances here, but hybrid nodes (mi-...) can be targeted too: any id, bounded.
    instance_id: str = Field(alias="instance-id", pattern=r"^(i|mi)-[0-9a-f]{8,17}$")
    # Informational only: the real status is read from GetCommandInvocation.
    status: str = Field(max_length=64)


class SsmInvocationStatusEvent(EventBridgeModel):
    """EC2 Command Invocation Status-change Notification: carries no output, and is delivered best effort."""

    source: Literal["aws.ssm"]
    detail_type: Literal["EC2 Command Invocation Status-change Notification"] = Field(alias="detail-type")
    detail: SsmInvocationStatusDetail


class ScheduledEvent(EventBridgeModel):
    """An EventBridge rule's schedule: the sweep."""

    source: Literal["aws.events"]
    detail_type: Literal["Scheduled Event"] = Field(alias="detail-type")


# --- CloudFormation custom resources (the uninstall's unpin, the warm volumes' uninstall) ---

CustomResourceModel = (
    CloudFormationCustomResourceCreateModel
    | CloudFormationCustomResourceUpdateModel
    | CloudFormationCustomResourceDeleteModel
)
CustomResourceRequest = Annotated[CustomResourceModel, Field(discriminator="request_type")]


def parse_custom_resource_request(event: Any, *, logger: Logger) -> CustomResourceModel | None:
    """The request parsed into ``CustomResourceRequest``; or None, logged, if it is malformed: it is still answered
    when it can be (``deploy.custom_resource.answer``). Logged with pydantic's errors, never the input: its
    ResponseURL is pre-signed."""
    try:
        return parse(event=event, model=CustomResourceRequest)
    except ValidationError as error:
        logger.error(
            "malformed custom resource request",
            extra={"errors": error.errors(include_url=False, include_input=False)},
        )
    except ValueError as error:  # not JSON: the message says where, not what
        logger.error("malformed custom resource request", extra={"error": f"{type(error).__name__}: {error}"[:300]})
    return None


def parse_or_drop(event: Any, model: Any, *, what: str, logger: Logger, metrics: Metrics, **log_fields: Any) -> Any:
    """The event parsed into ``model``; or None, with a warning and an EventsIgnored count, if it is malformed.

    Retrying cannot fix a malformed event, so it is logged (with pydantic's errors, never the input) and acknowledged.
    """
    try:
        return parse(event=event, model=model)
    except ValidationError as error:
        logger.warning(
            f"malformed {what} dropped",
            extra={**log_fields, "errors": error.errors(include_url=False, include_input=False)},
        )
        metrics.add_metric(name="EventsIgnored", unit=MetricUnit.Count, value=1)
        return None
