"""The stack of template.yaml, created in moto (in-process) as CloudFormation would create it, and its functions
invoked as `sam local invoke` invokes them.

Resources get generated physical names (``<stack>-<LogicalId>-<SUFFIX>``), and every !Ref/!GetAtt/!Sub/!If/!Join
resolves against what was created, so the functions see the environment a deployment gives them. Each function runs
in its own "container": its own copy of the handler module and of the layer's packages (swapped in and out of
sys.modules around an invocation), imported with its own environment, so module-level state (settings, clients,
Powertools loggers) is per function and survives between invocations, as in a warm Lambda container.
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import io
import json
import os
import secrets
import string
import sys
import threading
import traceback
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import yaml

from harness.template import Resolver, Unresolved, deployment_parameters, template

ROOT = Path(__file__).resolve().parent.parent
REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
STACK_NAME = "eks-image-prefetch"
# Credentials for moto; nothing leaves the process.
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
}


class LogSink(io.TextIOBase):
    """stdout of the emulated functions: Powertools' handlers keep the stream they were built with, so every
    function module is imported with this as sys.stdout, and it routes lines to the invocation running now."""

    def __init__(self) -> None:
        self._buffer: list[str] | None = None
        self._partial = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            if self._buffer is None:
                return sys.__stdout__.write(text)
            self._partial += text
            *lines, self._partial = self._partial.split("\n")
            self._buffer.extend(line for line in lines if line)
            return len(text)

    @contextlib.contextmanager
    def capture(self) -> Iterator[list[str]]:
        lines: list[str] = []
        self._buffer, self._partial = lines, ""
        try:
            yield lines
        finally:
            if self._partial:
                lines.append(self._partial)
            self._buffer, self._partial = None, ""


SINK = LogSink()


@dataclass
class Invocation:
    """One invocation of a function: its event, its result or error, and its log lines (its CloudWatch Logs)."""

    function: str
    event: Any
    result: Any = None
    error: str | None = None
    error_type: str | None = None
    logs: list[str] = field(default_factory=list)

    @property
    def records(self) -> list[dict[str, Any]]:
        """The structured (JSON) log lines; metrics (EMF) lines included."""
        parsed = []
        for line in self.logs:
            with contextlib.suppress(ValueError):
                parsed.append(json.loads(line))
        return parsed

    def messages(self) -> list[str]:
        return [record["message"] for record in self.records if "message" in record]


class LambdaContext:
    def __init__(self, function: Function) -> None:
        self.function_name = function.name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = function.memory_size
        self.invoked_function_arn = function.arn
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function.name}"
        self.log_stream_name = "emulated"
        self._timeout_ms = function.timeout * 1000

    def get_remaining_time_in_millis(self) -> int:
        # The emulator does not enforce the timeout; the functions read it for Powertools idempotency only.
        return self._timeout_ms


@dataclass
class Function:
    logical_id: str
    name: str
    arn: str
    code_uri: Path
    handler: str
    environment: dict[str, str]
    layers: list[Path]
    timeout: int
    memory_size: int
    events: dict[str, Any]
    event_invoke_config: dict[str, Any]
    invocations: list[Invocation] = field(default_factory=list)
    _modules: dict[str, Any] | None = None

    def _own_packages(self) -> set[str]:
        """Top-level modules that belong to this function: the handler's and the layers' packages."""
        names = {self.handler.rsplit(".", 1)[0]}
        for layer in self.layers:
            names.update(path.name.removesuffix(".py") for path in layer.iterdir() if not path.name.startswith("."))
        return names

    def _is_own(self, module: str) -> bool:
        return module.split(".", 1)[0] in self._own_packages()

    @contextlib.contextmanager
    def container(self, fresh: bool = False) -> Iterator[None]:
        """Run code with this function's code and environment (make demo reads the status function's coverage this
        way, as `make status` reads a deployed stack with the function's code). ``fresh``: in new modules, as a
        separate process would, leaving the warm ones to the function."""
        warm = self._modules
        if fresh:
            self._modules = None
        try:
            with self._container(load_handler=False):
                yield
        finally:
            if fresh:
                self._modules = warm

    @contextlib.contextmanager
    def _container(self, load_handler: bool = True) -> Iterator[Any]:
        saved_modules = {name: sys.modules.pop(name) for name in list(sys.modules) if self._is_own(name)}
        saved_path = list(sys.path)
        saved_env = dict(os.environ)
        sys.modules.update(self._modules or {})
        # Lambda's order: the function's code, then the layers (/opt/python).
        sys.path[:0] = [str(self.code_uri), *(str(layer) for layer in self.layers)]
        os.environ.update(self.lambda_environment())
        try:
            with contextlib.redirect_stdout(SINK):
                if not load_handler:
                    yield None
                    return
                module_name, attribute = self.handler.rsplit(".", 1)
                yield getattr(importlib.import_module(module_name), attribute)
        finally:
            self._modules = {name: sys.modules.pop(name) for name in list(sys.modules) if self._is_own(name)}
            sys.modules.update(saved_modules)
            sys.path[:] = saved_path
            os.environ.clear()
            os.environ.update(saved_env)

    def recycle(self) -> None:
        """A new execution environment for the next invocation (Lambda's cold start): module state is dropped."""
        self._modules = None

    def lambda_environment(self) -> dict[str, str]:
        """What Lambda sets, then the function's own variables."""
        return {
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_LAMBDA_FUNCTION_NAME": self.name,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.memory_size),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{self.name}",
            **FAKE_CREDENTIALS,
            **self.environment,
        }

    def invoke(self, event: Any) -> Invocation:
        """One synchronous invocation; an exception is recorded as the function error, as Lambda reports it."""
        invocation = Invocation(function=self.logical_id, event=event)
        with SINK.capture() as lines:
            try:
                with self._container() as handler, warnings.catch_warnings():
                    # Powertools warns on stderr when an invocation published no metric; that is normal here.
                    warnings.filterwarnings("ignore", message="No application metrics to publish")
                    invocation.result = handler(event, LambdaContext(self))
            except Exception as error:  # the function's error, whatever it is, is the invocation's result
                invocation.error = str(error)
                invocation.error_type = type(error).__name__
                lines.extend(
                    json.dumps({"level": "ERROR", "message": line})
                    for line in traceback.format_exc().rstrip().splitlines()[-3:]
                )
        invocation.logs = lines
        self.invocations.append(invocation)
        return invocation


def _suffix() -> str:
    return "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(12))


@dataclass
class EventSource:
    """Where events reach a function from: an EventBridge rule (pattern or schedule) or an SQS queue."""

    kind: str  # rule | sqs
    logical_id: str
    properties: dict[str, Any]
    target_arns: list[str] = field(default_factory=list)


# Lambda's quota "Function environment variables" (4 KB, not adjustable).
LAMBDA_ENVIRONMENT_LIMIT = 4096


class StackRefusedError(RuntimeError):
    """The stack's creation failed, as CloudFormation would fail it (a custom resource answered FAILED, Lambda refused
    a function's environment)."""


class Stack:
    """template.yaml created in moto. Call create() inside an active moto mock."""

    def __init__(
        self,
        parameters: dict[str, str] | None = None,
        name: str = STACK_NAME,
        physical_names: dict[str, str] | None = None,
        definition_substitutions: dict[str, dict[str, str]] | None = None,
    ) -> None:
        self.name = name
        # Names CloudFormation would generate, given instead (make invoke: the names a sample event carries).
        self.physical_names = dict(physical_names or {})
        # State machine logical id -> DefinitionSubstitutions that replace the template's (the harness's short polls).
        self.definition_substitutions = dict(definition_substitutions or {})
        self.state_machines: dict[str, str] = {}  # logical id -> ARN
        self.parameters = deployment_parameters(parameters)
        self.resolver = Resolver(
            self.parameters,
            {
                "AWS::Region": REGION,
                "AWS::AccountId": ACCOUNT,
                "AWS::Partition": "aws",
                "AWS::StackName": name,
                "AWS::URLSuffix": "amazonaws.com",
                "AWS::NoValue": "",
            },
        )
        self.functions: dict[str, Function] = {}
        self.queues: dict[str, dict[str, str]] = {}  # logical id -> {url, arn}
        self.layers: dict[str, Path] = {}  # layer ARN -> directory
        self.event_sources: list[EventSource] = []
        self.not_emulated: dict[str, str] = {}  # logical id -> type
        self.physical: dict[str, str] = {}

    # --- creation ---------------------------------------------------------------------------------------------

    def create(self) -> Stack:
        pending = dict(template()["Resources"])
        while pending:
            progressed = False
            for logical_id, resource in list(pending.items()):
                if "Condition" in resource and not self.resolver.condition(resource["Condition"]):
                    del pending[logical_id]
                    continue
                # As CloudFormation: not before what it depends on (a function waits for the configuration check).
                depends_on = resource.get("DependsOn") or []
                if any(name in pending for name in ([depends_on] if isinstance(depends_on, str) else depends_on)):
                    continue
                try:
                    self._create(logical_id, resource)
                except Unresolved:
                    continue
                del pending[logical_id]
                progressed = True
            if not progressed:
                raise RuntimeError(f"circular or unknown references among {sorted(pending)}")
        return self

    def _name(self, logical_id: str, limit: int = 80) -> str:
        return f"{self.name}-{logical_id}"[: limit - 13] + f"-{_suffix()}"

    def _create(self, logical_id: str, resource: dict[str, Any]) -> None:
        creator = {
            "AWS::Serverless::LayerVersion": self._layer,
            "AWS::SSM::Document": self._document,
            "AWS::Logs::LogGroup": self._log_group,
            "AWS::DynamoDB::Table": self._table,
            "AWS::SQS::Queue": self._queue,
            "AWS::SQS::QueuePolicy": self._queue_policy,
            "AWS::IAM::ManagedPolicy": self._managed_policy,
            "AWS::Serverless::Function": self._function,
            "AWS::Events::Rule": self._rule,
            "AWS::Lambda::EventSourceMapping": self._event_source_mapping,
            "AWS::Serverless::StateMachine": self._state_machine,
            "AWS::SSM::Parameter": self._parameter,
            "AWS::EC2::LaunchTemplate": self._launch_template,
            "AWS::IAM::InstanceProfile": self._instance_profile,
        }.get(resource["Type"])
        properties = self.resolver.resolve(resource.get("Properties") or {})
        if resource["Type"] == "Custom::ValidateConfiguration":
            self._validate_configuration(logical_id, properties)
            return
        if creator is None:
            # IAM roles, permissions, alarms...: nothing here enforces or evaluates them.
            self.not_emulated[logical_id] = resource["Type"]
            self.resolver.refs[logical_id] = self._name(logical_id)
            return
        creator(logical_id, properties)

    def _validate_configuration(self, logical_id: str, properties: dict[str, Any]) -> None:
        """CloudFormation's Create request to the stack's own check function (no ResponseURL: its answer is its
        result); FAILED fails the stack's creation with its reason, as `sam deploy` would."""
        function = self.function_by_arn(properties["ServiceToken"])
        if function is None:
            raise Unresolved(logical_id)
        event = {
            "RequestType": "Create",
            "StackId": f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/{self.name}/emulated",
            "RequestId": "create",
            "LogicalResourceId": logical_id,
            "ResourceType": "Custom::ValidateConfiguration",
            "ResourceProperties": properties,
        }
        answer = function.invoke(event)
        status = (answer.result or {}).get("status")
        if status != "SUCCESS":
            reason = (answer.result or {}).get("reason") or answer.error
            raise StackRefusedError(f"{logical_id} failed: {reason}")
        self.resolver.refs[logical_id] = logical_id

    def _layer(self, logical_id: str, properties: dict[str, Any]) -> None:
        arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:layer:{self._name(logical_id, 64)}:1"
        self.layers[arn] = ROOT / properties["ContentUri"]
        self.resolver.refs[logical_id] = arn

    def _document(self, logical_id: str, properties: dict[str, Any]) -> None:
        # No Name in the template: CloudFormation generates one, and the functions get it through !Ref.
        name = properties.get("Name") or self.physical_names.get(logical_id) or self._name(logical_id, 128)
        content_format = properties.get("DocumentFormat", "JSON")
        content = properties["Content"]
        text = yaml.safe_dump(content, sort_keys=False) if content_format == "YAML" else json.dumps(content)
        boto3.client("ssm", region_name=REGION).create_document(
            Name=name,
            Content=text,
            DocumentType=properties.get("DocumentType", "Command"),
            DocumentFormat=content_format,
            Tags=properties.get("Tags") or [],
        )
        self.physical[logical_id] = name
        self.resolver.refs[logical_id] = name

    def _log_group(self, logical_id: str, properties: dict[str, Any]) -> None:
        name = properties.get("LogGroupName") or self._name(logical_id, 512)
        logs = boto3.client("logs", region_name=REGION)
        logs.create_log_group(logGroupName=name)
        if "RetentionInDays" in properties:
            logs.put_retention_policy(logGroupName=name, retentionInDays=int(properties["RetentionInDays"]))
        self.physical[logical_id] = name
        self.resolver.refs[logical_id] = name
        self.resolver.attributes[(logical_id, "Arn")] = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{name}:*"

    def _table(self, logical_id: str, properties: dict[str, Any]) -> None:
        name = properties.get("TableName") or self._name(logical_id, 255)
        dynamodb = boto3.client("dynamodb", region_name=REGION)
        dynamodb.create_table(
            TableName=name,
            KeySchema=properties["KeySchema"],
            AttributeDefinitions=properties["AttributeDefinitions"],
            BillingMode=properties.get("BillingMode", "PROVISIONED"),
        )
        ttl = properties.get("TimeToLiveSpecification")
        if ttl:
            dynamodb.update_time_to_live(TableName=name, TimeToLiveSpecification=ttl)
        self.physical[logical_id] = name
        self.resolver.refs[logical_id] = name
        self.resolver.attributes[(logical_id, "Arn")] = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{name}"

    def _queue(self, logical_id: str, properties: dict[str, Any]) -> None:
        name = properties.get("QueueName") or self._name(logical_id)
        attributes = {
            key: (
                json.dumps(value)
                if isinstance(value, dict)
                else str(value).lower()
                if isinstance(value, bool)
                else str(value)
            )
            for key, value in properties.items()
            if key not in {"QueueName", "Tags"}
        }
        sqs = boto3.client("sqs", region_name=REGION)
        url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        arn = f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"
        self.queues[logical_id] = {"url": url, "arn": arn, "name": name}
        self.physical[logical_id] = name
        self.resolver.refs[logical_id] = url
        self.resolver.attributes[(logical_id, "Arn")] = arn
        self.resolver.attributes[(logical_id, "QueueName")] = name
        self.resolver.attributes[(logical_id, "QueueUrl")] = url

    def _queue_policy(self, logical_id: str, properties: dict[str, Any]) -> None:
        sqs = boto3.client("sqs", region_name=REGION)
        for url in properties["Queues"]:
            sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps(properties["PolicyDocument"])})
        self.resolver.refs[logical_id] = self._name(logical_id)

    def _managed_policy(self, logical_id: str, properties: dict[str, Any]) -> None:
        document = properties["PolicyDocument"]
        text = document if isinstance(document, str) else json.dumps(document)
        json.loads(text)  # a policy that is not JSON fails here, as it would fail to deploy
        name = properties.get("ManagedPolicyName") or self._name(logical_id, 128)
        arn = boto3.client("iam", region_name=REGION).create_policy(PolicyName=name, PolicyDocument=text)["Policy"][
            "Arn"
        ]
        self.resolver.refs[logical_id] = arn

    def _function(self, logical_id: str, properties: dict[str, Any]) -> None:
        globals_ = self.resolver.resolve((template().get("Globals") or {}).get("Function") or {})
        merged = {**globals_, **properties}
        environment = {
            **((globals_.get("Environment") or {}).get("Variables") or {}),
            **((properties.get("Environment") or {}).get("Variables") or {}),
        }
        # Lambda's refusal of an environment over 4 KB, measured as its message shows it ("String measured:" and the
        # variables as compact JSON).
        measured = json.dumps(
            {key: str(value) for key, value in environment.items()}, separators=(",", ":"), ensure_ascii=False
        )
        if len(measured.encode()) > LAMBDA_ENVIRONMENT_LIMIT:
            raise StackRefusedError(
                f"{logical_id} failed: Lambda was unable to configure your environment variables because the "
                f"environment variables you have provided exceeded the 4KB limit. String measured: {measured}"
            )
        name = properties.get("FunctionName") or self._name(logical_id, 64)
        arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"
        function = Function(
            logical_id=logical_id,
            name=name,
            arn=arn,
            code_uri=ROOT / merged["CodeUri"],
            handler=merged["Handler"],
            environment={key: str(value) for key, value in environment.items()},
            layers=[self.layers[layer] for layer in merged.get("Layers") or []],
            timeout=int(merged.get("Timeout", 3)),
            memory_size=int(merged.get("MemorySize", 128)),
            events=properties.get("Events") or {},
            event_invoke_config=properties.get("EventInvokeConfig") or {},
        )
        self.functions[logical_id] = function
        self.physical[logical_id] = name
        self.resolver.refs[logical_id] = name
        self.resolver.attributes[(logical_id, "Arn")] = arn
        for event_name, event in function.events.items():
            # SAM's implicit resources: the rule is <Function><Event>, the mapping likewise.
            source_id = f"{logical_id}{event_name}"
            if event["Type"] in {"EventBridgeRule", "CloudWatchEvent", "Schedule", "ScheduleV2"}:
                self.event_sources.append(EventSource("rule", source_id, event.get("Properties") or {}, [arn]))
            elif event["Type"] == "SQS":
                self.event_sources.append(EventSource("sqs", source_id, event["Properties"], [arn]))
            else:
                self.not_emulated[source_id] = f"SAM event {event['Type']}"

    def _rule(self, logical_id: str, properties: dict[str, Any]) -> None:
        name = properties.get("Name") or self._name(logical_id, 64)
        self.resolver.refs[logical_id] = name
        self.resolver.attributes[(logical_id, "Arn")] = f"arn:aws:events:{REGION}:{ACCOUNT}:rule/{name}"
        if properties.get("State", "ENABLED") != "ENABLED":
            return
        source = EventSource("rule", logical_id, properties, [target["Arn"] for target in properties["Targets"]])
        self.event_sources.append(source)

    def _event_source_mapping(self, logical_id: str, properties: dict[str, Any]) -> None:
        function = properties["FunctionName"]
        arn = function if function.startswith("arn:") else f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{function}"
        mapping = {"Queue": properties["EventSourceArn"], **properties}
        self.event_sources.append(EventSource("sqs", logical_id, mapping, [arn]))
        self.resolver.refs[logical_id] = str(uuid.uuid4())

    def _state_machine(self, logical_id: str, properties: dict[str, Any]) -> None:
        """The definition file with its DefinitionSubstitutions, as SAM substitutes them, created in moto's Step
        Functions (which executes it when the mock is started with execute_state_machine)."""
        substitutions = {
            name: str(value)
            for name, value in {
                **(properties.get("DefinitionSubstitutions") or {}),
                **self.definition_substitutions.get(logical_id, {}),
            }.items()
        }
        definition = (ROOT / properties["DefinitionUri"]).read_text()
        for name, value in substitutions.items():
            definition = definition.replace("${" + name + "}", value)
        if "${" in definition:
            raise RuntimeError(f"{logical_id}: a substitution the template does not give")
        name = properties.get("Name") or self._name(logical_id)
        arn = boto3.client("stepfunctions", region_name=REGION).create_state_machine(
            name=name, definition=definition, roleArn=f"arn:aws:iam::{ACCOUNT}:role/{name}"
        )["stateMachineArn"]
        self.state_machines[logical_id] = arn
        self.physical[logical_id] = name
        self.resolver.refs[logical_id] = arn
        self.resolver.attributes[(logical_id, "Name")] = name

    def _parameter(self, logical_id: str, properties: dict[str, Any]) -> None:
        name = properties.get("Name") or self._name(logical_id, 2048)
        boto3.client("ssm", region_name=REGION).put_parameter(
            Name=name, Type=properties.get("Type", "String"), Value=properties["Value"]
        )
        self.physical[logical_id] = name
        self.resolver.refs[logical_id] = name

    def _launch_template(self, logical_id: str, properties: dict[str, Any]) -> None:
        name = properties.get("LaunchTemplateName") or self._name(logical_id, 128)
        created = boto3.client("ec2", region_name=REGION).create_launch_template(
            LaunchTemplateName=name, LaunchTemplateData=_api_values(properties["LaunchTemplateData"])
        )["LaunchTemplate"]
        self.physical[logical_id] = name
        self.resolver.refs[logical_id] = created["LaunchTemplateId"]
        self.resolver.attributes[(logical_id, "LatestVersionNumber")] = str(created["LatestVersionNumber"])
        self.resolver.attributes[(logical_id, "DefaultVersionNumber")] = str(created["DefaultVersionNumber"])

    def _instance_profile(self, logical_id: str, properties: dict[str, Any]) -> None:
        # Without its roles: IAM roles are not emulated (nothing evaluates them); RunInstances checks the profile.
        name = properties.get("InstanceProfileName") or self._name(logical_id, 128)
        profile = boto3.client("iam", region_name=REGION).create_instance_profile(InstanceProfileName=name)
        self.physical[logical_id] = name
        self.resolver.refs[logical_id] = name
        self.resolver.attributes[(logical_id, "Arn")] = profile["InstanceProfile"]["Arn"]

    # --- lookups ----------------------------------------------------------------------------------------------

    def function_by_arn(self, arn: str) -> Function | None:
        return next((function for function in self.functions.values() if function.arn == arn), None)

    def queue_by_arn(self, arn: str) -> dict[str, str] | None:
        return next((queue for queue in self.queues.values() if queue["arn"] == arn), None)

    def queue_url(self, logical_id: str) -> str:
        return self.queues[logical_id]["url"]

    @property
    def document_name(self) -> str:
        # The prefetch document; the unpin document (uninstall) is another.
        return self.physical["PrefetchDocument"]

    def environment(self, logical_id: str) -> dict[str, str]:
        return dict(self.functions[logical_id].environment)


# Number members of a launch template's data: !Ref of a Number parameter is a string, CloudFormation converts it.
_NUMBERS = frozenset({"VolumeSize", "Iops", "Throughput", "VolumeInitializationRate"})


def _api_values(value: Any, key: str = "") -> Any:
    """Properties as CloudFormation hands them to the API: Fn::Base64 (which the resolver leaves) encoded, numbers
    given as strings converted."""
    if isinstance(value, dict) and set(value) == {"Fn::Base64"}:
        return base64.b64encode(value["Fn::Base64"].encode()).decode()
    if isinstance(value, dict):
        return {name: _api_values(item, name) for name, item in value.items()}
    if isinstance(value, list):
        return [_api_values(item) for item in value]
    return int(value) if key in _NUMBERS and isinstance(value, str) else value
