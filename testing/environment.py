"""The test deployment: moto's account and region, the stack's names, and the environment the functions get.

Nothing here imports the application, so the harness, which loads each function with its own layer as Lambda does,
can use it too. ``emulated_aws`` is the one way tests, harness and benchmarks start moto."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# moto's EC2 loads its AMI catalogue (thousands of images, seconds) into every new backend unless MOTO_AMIS_PATH names
# a file; the tests need four of them, copied from moto's catalogue (its example id, EKS Linux and Windows, an arm64
# one). Read when moto's EC2 models are first imported, so it is set before moto is.
AMIS_FILE = Path(__file__).with_name("amis.json")
os.environ.setdefault("MOTO_AMIS_PATH", str(AMIS_FILE))

from moto import mock_aws  # noqa: E402 - after MOTO_AMIS_PATH

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
REGISTRY = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"
CLUSTER = "ml-prod"
WATCHED = ("ml/trainer", "ml/inference")
DOCUMENT = "eks-image-prefetch-PrefetchDocument-ABC123"
TABLE = "eks-image-prefetch-idempotency"
STATUS_TABLE = "eks-image-prefetch-status"
LOG_GROUP = "/aws/ssm/eks-image-prefetch/prefetch"

DEPLOYMENT_ENV = {
    "AWS_REGION": REGION,
    "AWS_DEFAULT_REGION": REGION,
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "CLUSTER_NAME": CLUSTER,
    "REPOSITORY_NAMES": ",".join(WATCHED),
    "NODE_TAG_KEY": "eks:cluster-name",
    "NODE_TAG_VALUE": CLUSTER,
    "TAG_FILTER": "^(?!sha256-).+$",
    "REPOSITORY_NODE_SELECTORS": "",
    "DOCUMENT_NAME": DOCUMENT,
    "DOCUMENT_VERSION": "1",
    "MAX_CONCURRENCY": "",
    "REGISTRY_BANDWIDTH_GBPS": "50",
    "MAX_ERRORS": "25%",
    "DELIVERY_TIMEOUT_SECONDS": "600",
    "EXECUTION_TIMEOUT_SECONDS": "3600",
    "PULL_TIMEOUT_SECONDS": "1800",
    "PIN_IMAGES": "true",
    "PINNED_VERSIONS_TO_KEEP": "2",
    "MAX_DISK_USAGE_PERCENT": "80",
    "OUTPUT_LOG_GROUP": LOG_GROUP,
    "IDEMPOTENCY_TABLE": TABLE,
    "IDEMPOTENCY_TTL_SECONDS": "86400",
    "POWERTOOLS_SERVICE_NAME": "test",
    "POWERTOOLS_METRICS_NAMESPACE": "EksImagePrefetchTest",
    "POWERTOOLS_TRACE_DISABLED": "true",
    "POWERTOOLS_DEV": "false",
}


def emulated_aws(*, run_state_machines: bool = False) -> Any:
    """moto for every AWS call (a context manager; ``start()``/``stop()`` too).

    boto3's default session is kept across mocks (moto's ``core.reset_boto3_session`` off): a new session re-parses
    botocore's service models, about a tenth of a second per client, in every test. Each mock still starts with empty
    backends, and the credentials it sets are the ones every test uses. ``run_state_machines``: Step Functions
    executions run their states (aws-sdk integrations against this same mock) instead of only being recorded."""
    config: dict[str, Any] = {"core": {"reset_boto3_session": False}}
    if run_state_machines:
        config["stepfunctions"] = {"execute_state_machine": True}
    return mock_aws(config=config)
