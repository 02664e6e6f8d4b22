"""The answer to CloudFormation that every custom resource gives (unpin, warm uninstall, configuration check):
``deploy.custom_resource.answer``, and the handlers' use of it on requests that are malformed or cannot be answered.

CloudFormation's pre-signed ResponseURL is a real HTTP server on 127.0.0.1 (``CloudFormationEndpoint``, testing/)."""

from __future__ import annotations

from typing import Any

import pytest

from eks_prefetch.deploy.config_check import CheckOutcome
from eks_prefetch.deploy.custom_resource import answer
from testing.cloudformation import CloudFormationEndpoint
from testing.deployment import FakeLambdaContext, load_handler
from testing.environment import ACCOUNT, REGION

STACK_ID = f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/eks-image-prefetch/0f1e2d3c-0000-4000-8000-000000000000"
NO_URL = "the request has no usable ResponseURL"


def request(kind: str, url: Any, **fields: Any) -> dict[str, Any]:
    return {
        "RequestType": kind,
        "ServiceToken": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:custom-resource",
        "ResponseURL": url,
        "StackId": STACK_ID,
        "RequestId": f"req-{kind}",
        "LogicalResourceId": "Resource",
        "ResourceType": "Custom::Resource",
        "ResourceProperties": {"ServiceToken": "x"},
        **fields,
    }


def logged(caplog: pytest.LogCaptureFixture) -> str:
    """Every log record with its extra fields, as the JSON log line would carry them."""
    return "\n".join(str(vars(record)) for record in caplog.records)


# --- answer ----------------------------------------------------------------------------------------------------------


def test_an_outcome_is_put_at_the_url_with_the_ids_cloudformation_matches_it_by(
    endpoint: CloudFormationEndpoint,
) -> None:
    outcome = CheckOutcome("FAILED", "invalid configuration: NodeTagKey", "Resource-1")

    undelivered = answer(request("Update", endpoint.url), outcome, data={"CommandId": "c-1"})

    assert undelivered is None
    assert endpoint.bodies == [
        {
            "Status": "FAILED",
            "Reason": "invalid configuration: NodeTagKey",
            "PhysicalResourceId": "Resource-1",
            "StackId": STACK_ID,
            "RequestId": "req-Update",
            "LogicalResourceId": "Resource",
            "NoEcho": False,
            "Data": {"CommandId": "c-1"},
        }
    ]
    # Signed for an empty content type, as cfn-response sends it.
    assert endpoint.content_types == [""]


def test_a_malformed_request_is_answered_at_its_url_with_the_ids_it_has(endpoint: CloudFormationEndpoint) -> None:
    event = {"RequestType": "Delete", "ResponseURL": endpoint.url, "RequestId": "req-1"}

    undelivered = answer(event, CheckOutcome("SUCCESS", "malformed custom resource request", "Resource"))

    assert undelivered is None
    (body,) = endpoint.bodies
    assert (body["Status"], body["RequestId"], body["StackId"], body["LogicalResourceId"]) == (
        "SUCCESS",
        "req-1",
        "",
        "",
    )
    assert body["Data"] == {}


@pytest.mark.parametrize(
    "event",
    [
        request("Create", None),
        {"RequestType": "Create"},
        request("Create", "ftp://127.0.0.1/cfn-response?X-Amz-Signature=abc"),
        request("Create", "cloudformation-custom-resource-response.s3.amazonaws.com/x"),
        request("Create", ["https://127.0.0.1/"]),
        "not a request",
        None,
    ],
    ids=["null", "absent", "ftp", "no-scheme", "not-a-string", "a-string", "none"],
)
def test_a_request_without_a_usable_url_is_not_answered_and_says_so(event: Any) -> None:
    assert answer(event, CheckOutcome("FAILED", "malformed custom resource request", "Resource")) == NO_URL


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1:abc/cfn-response?X-Amz-Signature=abc",
        "https://[::1/cfn-response?X-Amz-Signature=abc",
        "https://?X-Amz-Signature=abc",
    ],
    ids=["port", "ipv6", "no-host"],
)
def test_a_url_that_is_not_one_is_not_answered_and_says_so_without_it(url: str) -> None:
    """http(s) in front is not enough: urllib would raise, with the URL's signature in its message."""
    assert answer(request("Create", url), CheckOutcome("FAILED", "malformed", "Resource")) == NO_URL


def test_a_url_with_a_space_is_answered_as_the_request_model_reads_it(endpoint: CloudFormationEndpoint) -> None:
    """Percent-encoded, as the parsed request's response_url is: a well-formed request and a malformed one are
    answered at the same URL."""
    url = endpoint.url + " x"

    assert answer(request("Create", url), CheckOutcome("FAILED", "malformed", "Resource")) is None
    assert len(endpoint.bodies) == 1 and endpoint.paths == ["/cfn-response?X-Amz-Signature=abc%20x"]


def test_an_answer_refused_at_the_url_says_why_without_the_url(endpoint: CloudFormationEndpoint) -> None:
    endpoint.status = 403  # S3's answer once the pre-signed URL has expired

    undelivered = answer(request("Create", endpoint.url), CheckOutcome("SUCCESS", "configuration valid", "Resource"))

    assert undelivered is not None and "HTTP Error 403" in undelivered
    assert "X-Amz-Signature" not in undelivered and "127.0.0.1" not in undelivered
    # Tried a few times: an answer that never arrives holds the stack operation until ServiceTimeout.
    assert len(endpoint.bodies) == 3


# --- the three handlers ----------------------------------------------------------------------------------------------

# The keys each handler returns (its invocation's result, which the harness and `make invoke` show).
RESULT_KEYS = {
    "unpin": {"status", "reason", "command_id"},
    "warm_uninstall": {
        "status",
        "reason",
        "executions_stopped",
        "builders_terminated",
        "fast_snapshot_restores_disabled",
    },
    "config_check": {"status", "reason"},
}


def invoke(function: str, event: Any) -> dict[str, Any]:
    return load_handler(function).lambda_handler(event, FakeLambdaContext())


def malformed(kind: str, url: Any) -> dict[str, Any]:
    """Malformed for every handler: no StackId (the request model), no ResourceProperties (the check)."""
    event = request(kind, url)
    del event["StackId"], event["ResourceProperties"]
    return event


@pytest.mark.parametrize(
    ("function", "kind", "status"),
    [
        ("unpin", "Create", "SUCCESS"),
        ("unpin", "Delete", "SUCCESS"),
        ("warm_uninstall", "Delete", "SUCCESS"),
        # The check refuses what it cannot read, except a deletion: nothing must hold a stack's deletion.
        ("config_check", "Create", "FAILED"),
        ("config_check", "Update", "FAILED"),
        ("config_check", "Delete", "SUCCESS"),
    ],
)
def test_a_malformed_request_is_still_answered_at_its_url(
    aws_mock: None, endpoint: CloudFormationEndpoint, function: str, kind: str, status: str
) -> None:
    result = invoke(function, malformed(kind, endpoint.url))

    (body,) = endpoint.bodies
    assert (body["Status"], body["RequestId"], body["LogicalResourceId"]) == (status, f"req-{kind}", "Resource")
    assert body["PhysicalResourceId"] == "Resource"  # no PhysicalResourceId given: the logical id
    assert "malformed" in body["Reason"]
    assert result["status"] == status and set(result) == RESULT_KEYS[function]


@pytest.mark.parametrize("function", sorted(RESULT_KEYS))
def test_a_malformed_request_without_a_usable_url_is_logged_as_unanswered(
    aws_mock: None, caplog: pytest.LogCaptureFixture, function: str
) -> None:
    result = invoke(function, malformed("Create", "s3.amazonaws.com/x?X-Amz-Signature=abc"))

    assert set(result) == RESULT_KEYS[function]
    assert "X-Amz-Signature" not in logged(caplog)
    (record,) = [record for record in caplog.records if record.message == "custom resource response not delivered"]
    assert record.error == NO_URL  # type: ignore[attr-defined]


@pytest.mark.parametrize("function", sorted(RESULT_KEYS))
def test_an_answer_not_delivered_is_logged_without_the_url(
    aws_mock: None, endpoint: CloudFormationEndpoint, caplog: pytest.LogCaptureFixture, function: str
) -> None:
    endpoint.status = 403
    properties = {"ServiceToken": "x", "RepositoryNames": "ml/trainer", "NodeTagKey": "eks:cluster-name"}

    result = invoke(function, request("Create", endpoint.url, ResourceProperties=properties))

    assert result["status"] == "SUCCESS"
    assert [body["Status"] for body in endpoint.bodies] == ["SUCCESS"] * 3
    (record,) = [record for record in caplog.records if record.message == "custom resource response not delivered"]
    assert "HTTP Error 403" in record.error  # type: ignore[attr-defined]
    assert "X-Amz-Signature" not in logged(caplog)


@pytest.mark.parametrize("function", sorted(RESULT_KEYS))
def test_a_malformed_url_neither_fails_the_handler_nor_reaches_the_logs(
    aws_mock: None, caplog: pytest.LogCaptureFixture, function: str
) -> None:
    """The request model's errors are logged without their input: the input is the pre-signed URL."""
    result = invoke(function, malformed("Create", "https://127.0.0.1:abc/cfn-response?X-Amz-Signature=abc"))

    assert set(result) == RESULT_KEYS[function]
    assert "X-Amz-Signature" not in logged(caplog)
    (record,) = [record for record in caplog.records if record.message == "custom resource response not delivered"]
    assert record.error == NO_URL  # type: ignore[attr-defined]
