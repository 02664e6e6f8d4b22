"""Typed models of the events the functions receive (Powertools parser / pydantic)."""

from __future__ import annotations

from typing import Literal

from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from pydantic import BaseModel, ConfigDict, Field

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
