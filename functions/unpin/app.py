"""The uninstall custom resource: on stack deletion, one best-effort command that removes this application's pins
from the cluster's nodes. Always answers SUCCESS, so the deletion is never blocked by it."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from eks_prefetch import aws
from eks_prefetch.deploy.custom_resource import answer, malformed_resource_id
from eks_prefetch.deploy.unpin import CustomResourceOutcome, UnpinTarget, on_custom_resource
from eks_prefetch.events import parse_custom_resource_request

logger = Logger()


@logger.inject_lambda_context(clear_state=True)
@aws.within_invocation_time
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = parse_custom_resource_request(event, logger=logger)
    if request is None:
        outcome = CustomResourceOutcome(malformed_resource_id(event, "unpin"), "malformed request")
    else:
        outcome = on_custom_resource(
            request.request_type,
            getattr(request, "physical_resource_id", None),
            request.stack_id,
            request.logical_resource_id,
            target=UnpinTarget.from_env,
            send=aws.ssm.send_command,
        )
        logger.info("custom resource answered", extra={"request_type": request.request_type, **outcome.as_dict()})
    undelivered = answer(event, outcome, data=outcome.data)
    if undelivered:
        logger.error("custom resource response not delivered", extra={"error": undelivered})
    return outcome.as_dict()
