"""`make invoke FUNCTION=<logical id> EVENT=<file>`: `sam local invoke <logical id> -e <file>` without Docker.

The function runs against the emulated stack (moto, created from template.yaml), with the environment the template
gives it. What the sample events refer to is seeded first, and printed: each tagged ECR push's image exists in ECR,
and an EC2 event's instance exists as a running cluster node with its SSM agent online (a dry-run node: nothing is
pulled here; `make demo` pulls for real); a scheduled sweep finds two online nodes, one holding the newest image
(its command's status event never came) and one lacking it. Prints the sample stack's parameters, the function's
log lines, its result as JSON on stdout, and a readable result line last.

A missing or malformed event file, or an event that belongs to another function, is a one-line error (exit 2).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from moto.ec2.models import ec2_backends

from harness.agent import TERMINAL
from harness.cluster import DryRunNode
from harness.stack import ACCOUNT, REGION, STACK_NAME, Invocation
from harness.template import Resolver, deployment_parameters, template
from harness.world import World

SCHEDULED_SOURCES = ("aws.events", "aws.scheduler")

# The deployment the sample events are written for (account 123456789012, us-east-1).
SAMPLE_PARAMETERS = {"ClusterName": "ml-prod", "RepositoryNames": "ml/trainer,ml/inference"}
_MANIFEST = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 2, "digest": ""},
    "layers": [],
}


def _events_in(event: Any) -> list[dict[str, Any]]:
    """The EventBridge events in a sample: the event itself, or the bodies of an SQS event's records."""
    if isinstance(event, dict) and "Records" in event:
        return [json.loads(record["body"]) for record in event["Records"] if record.get("body", "").startswith("{")]
    return [event] if isinstance(event, dict) else []


def seed(world: World, event: Any) -> list[str]:
    """Make what the event names exist, as it would in the account it came from. Returns what was seeded."""
    seeded = []
    for inner in _events_in(event):
        detail = inner.get("detail") or {}
        if inner.get("source") == "aws.ecr" and detail.get("image-tag"):
            repository = detail["repository-name"]
            if repository not in world.stack.parameters["RepositoryNames"]:
                continue
            manifest = json.dumps({**_MANIFEST, "config": {**_MANIFEST["config"], "digest": detail["image-digest"]}})
            world.ecr.put_image(
                repositoryName=repository,
                imageManifest=manifest,
                imageTag=detail["image-tag"],
                imageDigest=detail["image-digest"],
            )
            seeded.append(f"ECR image {repository}:{detail['image-tag']} {detail['image-digest'][:19]}")
        if (
            inner.get("source") == "aws.ssm"
            and inner.get("detail-type") == "EC2 Command Invocation Status-change Notification"
        ):
            seeded.extend(_seed_invocation(world, detail))
        if inner.get("source") in SCHEDULED_SOURCES:
            seeded.extend(_seed_sweep(world))
        if inner.get("source") == "aws.ec2" and "instance-id" in detail:
            seeded.append(_seed_instance(world, detail["instance-id"]))
            # Something for the new node to prefetch: an image in the first watched repository.
            repository = world.stack.parameters["RepositoryNames"][0]
            digest = "sha256:" + hashlib.sha256(b"sample image").hexdigest()
            manifest = json.dumps({**_MANIFEST, "config": {**_MANIFEST["config"], "digest": digest}})
            world.ecr.put_image(repositoryName=repository, imageManifest=manifest, imageTag="v1", imageDigest=digest)
            seeded.append(f"ECR image {repository}:v1 {digest[:19]}")
    return seeded


def _seed_invocation(world: World, detail: dict[str, Any]) -> list[str]:
    """The command the status event names, with the node's output for its status (another document's: nothing)."""
    if detail["document-name"] != world.stack.document_name:
        return []
    seeded = [_seed_instance(world, detail["instance-id"])]
    repository = world.stack.parameters["RepositoryNames"][0]
    digest = "sha256:" + hashlib.sha256(b"sample image").hexdigest()
    image = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/{repository}@{digest}"
    manifest = json.dumps({**_MANIFEST, "config": {**_MANIFEST["config"], "digest": digest}})
    world.ecr.put_image(repositoryName=repository, imageManifest=manifest, imageTag="v1", imageDigest=digest)
    status = detail["status"]
    failed = status != "Success"
    record = {"image": image, "status": "failed" if failed else "pulled", "seconds": 1.5}
    record.update({"error": "sample failure"} if failed else {"digest": digest, "bytes": 1024, "pinned": True})
    summary = {"summary": True, "images": 1, "pulled": int(not failed), "cached": 0, "skipped": 0}
    summary.update({"failed": int(failed), "unpinned": 0, "disk_used_percent": 40, "seconds": 1.6})
    stdout = "" if status not in TERMINAL else f"{json.dumps(record)}\n{json.dumps(summary)}\n"
    world.agent.seed_command(
        detail["command-id"], detail["document-name"], detail["instance-id"], status, stdout, image
    )
    seeded.append(f"SSM command {detail['command-id'][:8]} on {detail['instance-id']}: {status}")
    seeded.append(f"ECR image {repository}:v1 {digest[:19]}")
    return seeded


def _seed_sweep(world: World) -> list[str]:
    """Something for a sweep to find: a node whose command finished without its status event reaching the function
    (the sweep counts it and records the image it holds), and a node that lacks the newest image."""
    holding, lacking = "i-0a1b2c3d4e5f60718", "i-0a1b2c3d4e5f60719"
    detail = {
        "command-id": "5a3f2c1e-0b9d-4c8e-8f7a-6b5c4d3e2f10",
        "document-name": world.stack.document_name,
        "instance-id": holding,
        "status": "Success",
    }
    seeded = _seed_invocation(world, detail)
    seeded.append(_seed_instance(world, lacking))
    return [*seeded, f"no status event for the command on {holding}: the sweep finds it"]


def _seed_instance(world: World, instance_id: str) -> str:
    # EC2 picks instance ids; the sample's is given, so moto's instance is renamed before it is tagged.
    image_id = world.ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    (described,) = world.ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1)["Instances"]
    (instance,) = [i for i in ec2_backends[ACCOUNT][REGION].all_instances() if i.id == described["InstanceId"]]
    instance.id = instance_id
    key, value = world.node_tag
    world.ec2.create_tags(Resources=[instance_id], Tags=[{"Key": key, "Value": value}])
    node = DryRunNode(instance_id, world.base / "nodes" / instance_id, "make invoke runs no node").start()
    world.agent.register(instance_id, node)
    return f"EC2 instance {instance_id}, running, tagged {key}={value}, SSM agent online"


def invoke(function: str, event_path: Path, parameters: dict[str, str] | None = None) -> Invocation:
    """Invoke one function of the emulated stack with a sample event, seeded; the world is torn down after."""
    event = json.loads(event_path.read_text())
    names = {}
    for inner in _events_in(event):
        document = (inner.get("detail") or {}).get("document-name", "")
        if document.startswith(f"{STACK_NAME}-PrefetchDocument-"):
            # The sample names the stack's document: the emulated stack's gets that name.
            names["PrefetchDocument"] = document
    with World({**SAMPLE_PARAMETERS, **(parameters or {})}, real_nodes=False, physical_names=names) as world:
        if function not in world.stack.functions:
            raise SystemExit(f"no function {function} in template.yaml; functions: {sorted(world.stack.functions)}")
        for line in seed(world, event):
            print(f"seeded: {line}", file=sys.stderr)
        target = world.stack.functions[function]
        if _fed_by_queue(world, function) and "Records" not in event:
            # An EventBridge event for a function that reads a queue: deliver it the way the template wires it.
            world.emit(event)
            world.router.pump()
            invocations = [d.invocation for d in world.deliveries if d.target == function and d.invocation]
            if not invocations:
                raise SystemExit(f"the template's rules do not route this event to {function}")
            print(f"routed: {' -> '.join(_route(world, function))}", file=sys.stderr)
            return invocations[-1]
        return target.invoke(event)


def _fed_by_queue(world: World, function: str) -> bool:
    arn = world.stack.functions[function].arn
    return any(source.kind == "sqs" and arn in source.target_arns for source in world.stack.event_sources)


def _route(world: World, function: str) -> list[str]:
    chain = [world.deliveries[0].source] if world.deliveries else []
    chain += [delivery.target for delivery in world.deliveries]
    return chain


class UsageError(Exception):
    """What make invoke says in one line instead of a traceback (exit 2)."""


def read_event(path: Path) -> Any:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UsageError(f"no event file {path} (the samples are under events/<function>/)") from None
    except OSError as error:
        raise UsageError(f"cannot read the event file {path}: {error.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"{path} is not JSON: {error.msg} at line {error.lineno}, column {error.colno}") from None


def event_kind(event: Any) -> str:
    """How an event reads to a person: its source and type, or its wrapping."""
    if isinstance(event, dict) and "RequestType" in event:
        return f"a CloudFormation custom resource {event['RequestType']} request"
    if isinstance(event, dict) and "Records" in event:
        return "an SQS batch"
    if isinstance(event, dict) and "source" in event:
        return f'an {event["source"]} "{event.get("detail-type", "")}" event'
    return "not an event any function of the stack receives"


def _ref(value: Any) -> str | None:
    """The logical id a !GetAtt or !Ref names."""
    if isinstance(value, dict):
        return value["Fn::GetAtt"][0] if "Fn::GetAtt" in value else value.get("Ref")
    return None


def _receivers(parameters: dict[str, str] | None = None) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(event source -> functions, queue -> functions) as template.yaml wires them for these stack parameters: the
    functions' own rules and schedules, their SQS event sources, and the rules that feed those queues. A resource
    whose Condition is false for the parameters (the warm planner with WarmVolumes off) does not exist."""
    resolver = Resolver(deployment_parameters(parameters), {"AWS::Region": REGION, "AWS::AccountId": ACCOUNT})
    resources = {
        name: resource
        for name, resource in template()["Resources"].items()
        if "Condition" not in resource or resolver.condition(resource["Condition"])
    }
    sources: dict[str, set[str]] = {}
    queues: dict[str, set[str]] = {}
    for name, resource in resources.items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        for spec in (resource["Properties"].get("Events") or {}).values():
            properties = spec.get("Properties") or {}
            if spec["Type"] == "SQS":
                queues.setdefault(_ref(properties["Queue"]) or "", set()).add(name)
            elif spec["Type"] in {"Schedule", "ScheduleV2"}:
                for source in SCHEDULED_SOURCES:
                    sources.setdefault(source, set()).add(name)
            for source in (properties.get("Pattern") or {}).get("source", []):
                sources.setdefault(source, set()).add(name)
    for resource in resources.values():
        if resource["Type"] == "AWS::Events::Rule":
            for target in resource["Properties"].get("Targets", []):
                for source in resource["Properties"].get("EventPattern", {}).get("source", []):
                    sources.setdefault(source, set()).update(queues.get(_ref(target.get("Arn")) or "", set()))
    return sources, queues


def owners(event: Any, parameters: dict[str, str] | None = None) -> list[str]:
    """The functions of template.yaml that receive this kind of event, in a stack of these parameters."""
    if not isinstance(event, dict):
        return []
    if "RequestType" in event:  # the custom resources' functions
        tokens = [r.get("Properties", {}).get("ServiceToken") for r in template()["Resources"].values()]
        return sorted({name for name in map(_ref, tokens) if name})
    sources, queues = _receivers(parameters)
    if "Records" in event:
        return sorted(set().union(*queues.values()))
    return sorted(sources.get(event.get("source", ""), set()))


def summary(function: str, invocation: Invocation) -> str:
    """The result in one line: the function, then its result's fields as key=value."""
    if invocation.error is not None:
        return f"result: {function} failed: {invocation.error_type}: {invocation.error}"
    result = invocation.result
    if isinstance(result, dict):
        fields = " ".join(
            f"{key}={value}"
            if isinstance(value, str | int | float | bool)
            else f"{key}={json.dumps(value, default=str)}"
            for key, value in result.items()
        )
        return f"result: {function}: {fields}"
    return f"result: {function}: {json.dumps(result, default=str)}"


def parse_overrides(items: list[str]) -> dict[str, str]:
    bad = [item for item in items if "=" not in item]
    if bad:
        raise UsageError(f"parameter override {bad[0]!r} is not KEY=VALUE")
    return dict(item.split("=", 1) for item in items)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("function", help="logical id in template.yaml, e.g. EcrPushFunction")
    parser.add_argument("event", type=Path, help="event file, e.g. events/ecr_push/push-tagged.json")
    parser.add_argument("--parameter-overrides", nargs="*", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.parameter_overrides)
        event = read_event(args.event)
        parameters = {**SAMPLE_PARAMETERS, **overrides}
        try:
            deployment_parameters(parameters)
        except ValueError as error:  # what CloudFormation would refuse
            raise UsageError(str(error)) from None
        receivers = owners(event, parameters)
        if args.function not in receivers:
            functions = sorted(
                name for name, r in template()["Resources"].items() if r["Type"] == "AWS::Serverless::Function"
            )
            if args.function not in functions:
                raise UsageError(f"no function {args.function} in template.yaml; functions: {', '.join(functions)}")
            where = f"it is for {', '.join(receivers)}" if receivers else "no function of the stack receives it"
            raise UsageError(f"{args.event} is {event_kind(event)}: {where}, not {args.function}")
        print(
            f"stack {STACK_NAME} (emulated) with "
            + " ".join(f"{key}={value}" for key, value in parameters.items())
            + '; the other parameters as template.yaml defaults them (override: PARAMS="Key=Value ...")',
            file=sys.stderr,
        )
        invocation = invoke(args.function, args.event, overrides)
    except UsageError as error:
        print(f"make invoke: {error}", file=sys.stderr)
        return 2
    for line in invocation.logs:
        print(line, file=sys.stderr)
    if invocation.error is not None:
        print(json.dumps({"errorType": invocation.error_type, "errorMessage": invocation.error}))
        print(summary(args.function, invocation), file=sys.stderr)
        return 1
    print(json.dumps(invocation.result, default=str))
    print(summary(args.function, invocation), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
