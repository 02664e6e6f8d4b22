"""Runtime configuration: read from the environment that template.yaml sets, validated once per function.

Each function has its own model (``PushSettings``, ``LaunchSettings``, ``StatusSettings``, ``PlannerSettings``),
built from the pieces below, and loads it at its first invocation (``load``): a variable the function needs and
its environment lacks is named there, not at the first code path that happens to read it. template.yaml gives each
function exactly the variables its model reads (a test holds the two together). The domain code asks for the
narrowest piece it reads: resolution a ``ClusterSettings``, the status table a ``StatusTableSettings``.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from typing import Annotated, Self, TypeVar

from aws_lambda_powertools import Logger
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from eks_prefetch.images import REPOSITORY_PATTERN
from eks_prefetch.node_contract import deadline_margin_seconds
from eks_prefetch.node_selectors import Selector, matches, parse_node_selectors, target_key_problem

logger = Logger(child=True)

# SSM accepts an absolute count or a percentage for MaxConcurrency and MaxErrors; only MaxErrors may be 0. An empty
# MaxConcurrency leaves it to the registry path's budget (REGISTRY_BANDWIDTH_GBPS).
_CONCURRENCY = r"^([1-9][0-9]{0,5}|[1-9][0-9]?%|100%)?$"
_ERRORS = r"^([0-9]{1,6}|[0-9][0-9]?%|100%)$"


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class EnvironmentSettings(BaseModel):
    """What every function's settings share: read from environment variables by their names (the aliases)."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        return cls.model_validate(dict(os.environ if environ is None else environ))

    @classmethod
    def variables(cls) -> frozenset[str]:
        """The environment variables this model reads (AWS_REGION is Lambda's own)."""
        return frozenset(str(field.alias) for field in cls.model_fields.values()) - {"AWS_REGION"}

    def conflicts(self) -> list[str]:
        """Combinations of values CloudFormation accepts but that cannot work as given, and how they are resolved.

        The template cannot compare two parameters, so these are resolved here, safely, and logged at start."""
        return []


class ClusterSettings(EnvironmentSettings):
    """The cluster, its nodes' tag and the watched repositories: what resolution and node selection read."""

    # Lambda's own variable: the region of the functions, and of the registry they resolve images in.
    region: str = Field(alias="AWS_REGION", min_length=1)
    cluster_name: str = Field(alias="CLUSTER_NAME", min_length=1)
    # No upper bound here: CloudFormation cannot count a list's items, and a new node gets the images of more than
    # 50 repositories (the document's limit per command) in several commands.
    repository_names: tuple[str, ...] = Field(alias="REPOSITORY_NAMES", min_length=1)
    node_tag_key: str = Field(alias="NODE_TAG_KEY", min_length=1, max_length=128)
    node_tag_value: str = Field(alias="NODE_TAG_VALUE", min_length=1, max_length=256)
    tag_filter: str = Field(alias="TAG_FILTER", default=r"^(?!sha256-).+$")
    # The RepositoryNodeSelectors JSON, parsed in _selectors_are_valid (node_selectors.py); the deploy refuses an
    # invalid one first (the ValidateConfiguration custom resource), so that no event fails on it.
    repository_node_selectors_json: str = Field(alias="REPOSITORY_NODE_SELECTORS", default="")
    _selectors: dict[str, dict[str, tuple[str, ...]]] = PrivateAttr(default_factory=dict)

    _split_repositories = field_validator("repository_names", mode="before")(_split_csv)

    @field_validator("repository_names")
    @classmethod
    def _repositories_are_ecr_names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        bad = [name for name in names if not re.fullmatch(REPOSITORY_PATTERN, name)]
        if bad:
            raise ValueError(f"not valid ECR repository names: {bad}")
        return names

    @field_validator("node_tag_key")
    @classmethod
    def _node_tag_key_is_a_target_key(cls, key: str) -> str:
        problem = target_key_problem(key)
        if problem:
            raise ValueError(f"NODE_TAG_KEY {key!r} {problem}")
        return key

    @field_validator("tag_filter")
    @classmethod
    def _tag_filter_compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"TAG_FILTER is not a valid regular expression: {error}") from error
        return pattern

    @model_validator(mode="after")
    def _selectors_are_valid(self) -> Self:
        parsed = parse_node_selectors(self.repository_node_selectors_json, self.repository_names, self.node_tag_key)
        self._selectors = parsed
        return self

    @property
    def node_selectors(self) -> dict[str, dict[str, tuple[str, ...]]]:
        """Repository -> tag conditions, for the repositories that have one."""
        return self._selectors

    def selector_for(self, repository: str) -> Selector:
        """The repository's tag conditions; empty: every cluster node."""
        return self.node_selectors.get(repository, {})

    def repositories_for(self, tags: Mapping[str, str]) -> tuple[str, ...]:
        """The watched repositories whose selectors a node with these tags matches."""
        return tuple(name for name in self.repository_names if matches(self.selector_for(name), tags))

    @property
    def tag_pattern(self) -> re.Pattern[str]:
        return _compiled(self.tag_filter)


class CommandSettings(ClusterSettings):
    """The prefetch document and what each command tells the nodes: what building a SendCommand request reads."""

    document_name: str = Field(alias="DOCUMENT_NAME", min_length=3)
    document_version: str = Field(alias="DOCUMENT_VERSION", default="1", pattern=r"^([0-9]+|\$LATEST|\$DEFAULT)$")
    # Empty: each command's MaxConcurrency follows from the bytes it sends and the registry path's budget
    # (prefetch/commands.py). A count or a percentage: that, for every command, as the user set it.
    max_concurrency: str = Field(alias="MAX_CONCURRENCY", default="", pattern=_CONCURRENCY)
    # What the nodes' pulls may ask of the registry path together (NAT gateway, VPC endpoints, ECR), in Gbit/s.
    registry_bandwidth_gbps: Annotated[float, Field(ge=1, le=100_000, allow_inf_nan=False)] = Field(
        alias="REGISTRY_BANDWIDTH_GBPS", default=50.0
    )
    max_errors: str = Field(alias="MAX_ERRORS", default="25%", pattern=_ERRORS)
    delivery_timeout_seconds: Annotated[int, Field(ge=30, le=2_592_000)] = Field(
        alias="DELIVERY_TIMEOUT_SECONDS", default=600
    )
    execution_timeout_seconds: Annotated[int, Field(ge=60, le=172_800)] = Field(
        alias="EXECUTION_TIMEOUT_SECONDS", default=3600
    )
    pull_timeout_seconds: Annotated[int, Field(ge=30, le=172_800)] = Field(alias="PULL_TIMEOUT_SECONDS", default=1800)
    pin_images: bool = Field(alias="PIN_IMAGES", default=True)
    pinned_versions_to_keep: Annotated[int, Field(ge=1, le=100)] = Field(alias="PINNED_VERSIONS_TO_KEEP", default=2)
    max_disk_usage_percent: Annotated[int, Field(ge=10, le=95)] = Field(alias="MAX_DISK_USAGE_PERCENT", default=80)
    output_log_group: str = Field(alias="OUTPUT_LOG_GROUP", min_length=1)

    @property
    def registry_bytes_per_second(self) -> float:
        return self.registry_bandwidth_gbps * 1e9 / 8

    @property
    def effective_pull_timeout_seconds(self) -> int:
        """The pull timeout, below the whole run's deadline (the script ends its run a margin before the agent's
        execution timeout: a tenth of it, 5 to 60 s), so that a hung pull is reported, not killed."""
        margin = deadline_margin_seconds(self.execution_timeout_seconds)
        return min(self.pull_timeout_seconds, self.execution_timeout_seconds - margin)

    def conflicts(self) -> list[str]:
        found = super().conflicts()
        if self.pull_timeout_seconds != self.effective_pull_timeout_seconds:
            found.append(
                f"PULL_TIMEOUT_SECONDS {self.pull_timeout_seconds} does not fit in EXECUTION_TIMEOUT_SECONDS "
                f"{self.execution_timeout_seconds}: pulls are bounded at {self.effective_pull_timeout_seconds} s"
            )
        return found


class SendingSettings(CommandSettings):
    """Sending each command exactly once: the idempotency table (prefetch/sending.py) beside the command."""

    idempotency_table: str = Field(alias="IDEMPOTENCY_TABLE", min_length=3)
    idempotency_ttl_seconds: Annotated[int, Field(ge=60, le=31_536_000)] = Field(
        alias="IDEMPOTENCY_TTL_SECONDS", default=86_400
    )


class StatusTableSettings(EnvironmentSettings):
    """The table of node state (a row per node and repository), invocation claims, the sweep's watermark and the warm
    builds' claim."""

    status_table: str = Field(alias="STATUS_TABLE", min_length=3)
    # A node's rows live this long after it last reported or was seen online: a terminated node's rows expire.
    node_state_ttl_seconds: Annotated[int, Field(ge=3600, le=31_536_000)] = Field(
        alias="NODE_STATE_TTL_SECONDS", default=604_800
    )


# --- The functions' settings -------------------------------------------------------------------------------------


class PushSettings(SendingSettings):
    """The ecr-push function's."""


class LaunchSettings(SendingSettings):
    """The node-launch function's: its retry budget besides sending.

    max_receives mirrors the queue's redrive maxReceiveCount, so that the function knows which attempt is its last;
    the backoff stays at base for the first fast_retries receives (the agent's usual registration window), then
    doubles per receive up to max (SQS caps visibility at 12 hours). The defaults are tuned by `make bench`
    (BENCHMARKS.md, new-node delay): about 50 minutes in all before the dead-letter queue."""

    node_launch_max_receives: Annotated[int, Field(ge=1, le=1000)] = Field(alias="NODE_LAUNCH_MAX_RECEIVES", default=27)
    node_tag_grace_seconds: Annotated[int, Field(ge=0, le=3600)] = Field(alias="NODE_TAG_GRACE_SECONDS", default=300)
    node_launch_retry_base_seconds: Annotated[int, Field(ge=1, le=43_200)] = Field(
        alias="NODE_LAUNCH_RETRY_BASE_SECONDS", default=10
    )
    node_launch_fast_retries: Annotated[int, Field(ge=1, le=1000)] = Field(alias="NODE_LAUNCH_FAST_RETRIES", default=14)
    node_launch_retry_max_seconds: Annotated[int, Field(ge=1, le=43_200)] = Field(
        alias="NODE_LAUNCH_RETRY_MAX_SECONDS", default=300
    )

    def conflicts(self) -> list[str]:
        found = super().conflicts()
        if self.node_launch_retry_base_seconds > self.node_launch_retry_max_seconds:
            found.append(
                f"NODE_LAUNCH_RETRY_BASE_SECONDS {self.node_launch_retry_base_seconds} exceeds "
                f"NODE_LAUNCH_RETRY_MAX_SECONDS {self.node_launch_retry_max_seconds}: every retry waits the maximum"
            )
        return found


class StatusSettings(SendingSettings, StatusTableSettings):
    """The status function's: counting, coverage, the sweep and self-repair (which sends repair commands)."""

    # The sweep never looks further back than this, whatever its watermark: a command that never ends cannot pin it.
    sweep_max_lookback_seconds: Annotated[int, Field(ge=600, le=2_592_000)] = Field(
        alias="SWEEP_MAX_LOOKBACK_SECONDS", default=172_800
    )
    repair_enabled: bool = Field(alias="REPAIR_ENABLED", default=True)
    # After a push (or a node's registration), the fleet command (or the node-launch path) is still at work.
    repair_grace_seconds: Annotated[int, Field(ge=0, le=86_400)] = Field(alias="REPAIR_GRACE_SECONDS", default=900)
    # At most this many nodes are sent a repair per sweep, oldest gap first: an outage is no thundering herd.
    repair_max_nodes_per_sweep: Annotated[int, Field(ge=1, le=10_000)] = Field(
        alias="REPAIR_MAX_NODES_PER_SWEEP", default=200
    )
    # A node that keeps failing waits twice as long after each repair, up to this.
    repair_backoff_cap_seconds: Annotated[int, Field(ge=600, le=604_800)] = Field(
        alias="REPAIR_BACKOFF_CAP_SECONDS", default=21_600
    )


class PlannerSettings(CommandSettings, StatusTableSettings):
    """The warm planner's (docs/warm-volumes.md): the build's prefetch command, its claim in the status table, and
    the warm volume's resources."""

    # The stack's name: the value of the warm-builder and warm-snapshot tags.
    warm_stack_name: str = Field(alias="WARM_STACK_NAME", min_length=1)
    warm_state_machine_arn: str = Field(alias="WARM_STATE_MACHINE_ARN", min_length=20)
    # An AMI id, or an SSM parameter path that holds one (the template's WarmNodeAmi pattern).
    warm_node_ami: str = Field(alias="WARM_NODE_AMI", pattern=r"^(ami-[0-9a-f]{8,17}|/[A-Za-z0-9_./-]+)$")
    warm_snapshot_parameter: str = Field(alias="WARM_SNAPSHOT_PARAMETER", min_length=2)
    warm_launch_template_id: str = Field(alias="WARM_LAUNCH_TEMPLATE_ID", min_length=3)
    # The launch template version CloudFormation last wrote: after a stack update changed it, a build carries it.
    warm_launch_template_version: str = Field(alias="WARM_LAUNCH_TEMPLATE_VERSION", pattern=r"^[1-9][0-9]*$")
    warm_snapshots_to_keep: Annotated[int, Field(ge=1, le=50)] = Field(alias="WARM_SNAPSHOTS_TO_KEEP", default=2)
    warm_build_debounce_minutes: Annotated[int, Field(ge=15, le=10_080)] = Field(
        alias="WARM_BUILD_DEBOUNCE_MINUTES", default=180
    )
    # The longest a build can run: a builder older than this belongs to no build that can still end it.
    warm_build_max_seconds: Annotated[int, Field(ge=600, le=604_800)] = Field(
        alias="WARM_BUILD_MAX_SECONDS", default=43_200
    )


@functools.cache
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


FunctionSettings = TypeVar("FunctionSettings", bound=EnvironmentSettings)


@functools.cache
def load(model: type[FunctionSettings]) -> FunctionSettings:
    """A function's settings, validated at its first invocation and then reused for the container's life; a missing
    or invalid variable fails that invocation with its name. Conflicts the template cannot rule out are logged."""
    settings = model.from_env()
    for conflict in settings.conflicts():
        logger.warning(f"configuration conflict resolved: {conflict}")
    return settings
