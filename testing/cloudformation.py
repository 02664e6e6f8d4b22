"""CloudFormation for the tests: DescribeStacks for the operator's commands (moto's CloudFormation needs extras this
project does not install, so a botocore Stubber answers on the code's own client, ``aws.client("cloudformation")``),
and the pre-signed ResponseURL a custom resource answers at (a real HTTP server on 127.0.0.1)."""

from __future__ import annotations

import http.server
import json
import threading
from datetime import UTC, datetime
from typing import Any

from botocore.stub import Stubber

from eks_prefetch import aws


class DeployedStacks:
    """DescribeStacks answered by a Stubber: stacks with their outputs and parameters, or no such stack."""

    def __init__(self) -> None:
        self.stubber = Stubber(aws.client("cloudformation"))
        self.stubber.activate()

    def exists(self, name: str, outputs: dict[str, str], parameters: dict[str, str] | None = None) -> None:
        stack = {
            "StackName": name,
            "CreationTime": datetime(2026, 11, 1, tzinfo=UTC),
            "StackStatus": "UPDATE_COMPLETE",
            "Outputs": [{"OutputKey": key, "OutputValue": value} for key, value in outputs.items()],
            "Parameters": [{"ParameterKey": key, "ParameterValue": value} for key, value in (parameters or {}).items()],
        }
        self.stubber.add_response("describe_stacks", {"Stacks": [stack]}, {"StackName": name})

    def missing(self, name: str) -> None:
        self.stubber.add_client_error(
            "describe_stacks",
            service_error_code="ValidationError",
            service_message=f"Stack with id {name} does not exist",
            http_status_code=400,
            expected_params={"StackName": name},
        )


class CloudFormationEndpoint:
    """The pre-signed ResponseURL: records every PUT body, as S3 would store it for CloudFormation, and answers
    ``status`` (403 is what S3 answers once the signature has expired)."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.content_types: list[str | None] = []
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                length = int(self.headers["Content-Length"])
                endpoint.bodies.append(json.loads(self.rfile.read(length)))
                endpoint.paths.append(self.path)
                endpoint.content_types.append(self.headers.get("Content-Type"))
                self.send_response(endpoint.status)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/cfn-response?X-Amz-Signature=abc"

    def start(self) -> CloudFormationEndpoint:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
