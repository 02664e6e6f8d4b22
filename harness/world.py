"""Everything together: moto (in-process) with the stack of template.yaml, the router, the Run Command agent, the
registry standing in for ECR, and the nodes. A context manager: every process it starts is stopped on exit."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
from moto.ec2.models import EC2Backend
from moto.ecr.models import ecr_backends

from harness.agent import LINUX, Platform, RunCommandAgent
from harness.cluster import DryRunNode, EcrRegistry, Node, PushedImage
from harness.node import Containerd, missing_prerequisites
from harness.proxy import RegistryProxy
from harness.routing import Delivery, Router, event_envelope
from harness.stack import ACCOUNT, FAKE_CREDENTIALS, REGION, Stack
from testing.environment import emulated_aws
from testing.warm import delete_launch_template_versions, inherit_source_version, sfn_aws_casing


@dataclass
class Instance:
    instance_id: str
    name: str
    node: Node | DryRunNode
    is_node: bool
    proxy: RegistryProxy | None = None


@dataclass(frozen=True)
class Launched:
    """An instance RunInstances created other than through World.launch (a state machine's), as on_launch sees it."""

    instance_id: str
    image_id: str
    tags: dict[str, str]
    snapshots: dict[str, str | None]  # device name -> the snapshot its volume was created from


class _MotoPatches:
    """What the stack's state machine needs of moto beyond its mock, set on start and undone on close:

    - RunInstances tells ``on_launch`` of every instance it creates (other than World.launch's), in the caller's
      thread, before it answers: the harness gives such an instance its node as EC2 would boot it.
    - aws-sdk:sfn's field casing: AWS takes and returns an aws-sdk integration's fields in PascalCase whatever the
      service's own casing; moto hands them to boto3 as written, and boto3's Step Functions fields are camelCase
      (the builder's one-build-at-a-time check). EC2's and SSM's fields are PascalCase in boto3 too.
    - CreateLaunchTemplateVersion's SourceVersion, which moto ignores (testing.warm.inherit_source_version), and
      DeleteLaunchTemplateVersions, which moto lacks (testing.warm.delete_launch_template_versions: a failed
      publication removes the version it created).
    """

    def __init__(self, world: World) -> None:
        self.world = world
        self.saved: list[tuple[Any, str, Any]] = []
        self.local = threading.local()  # set while World.launch runs its own RunInstances

    def setattr(self, owner: Any, name: str, value: Any, raising: bool = True) -> None:
        self.saved.append((owner, name, owner.__dict__.get(name)))
        setattr(owner, name, value)

    def install(self) -> None:
        patches = self
        run_instances = EC2Backend.run_instances

        def run_and_tell(backend: EC2Backend, *args: Any, **kwargs: Any) -> Any:
            reservation = run_instances(backend, *args, **kwargs)
            if getattr(patches.local, "launching", False):
                return reservation
            for instance in reservation.instances:
                snapshots = {
                    device: backend.get_volume(mapping.volume_id).snapshot_id
                    for device, mapping in instance.get_block_device_mapping
                }
                tags = {tag["key"]: tag["value"] for tag in instance.get_tags()}
                for callback in list(patches.world.on_launch):
                    callback(Launched(instance.id, instance.image_id, tags, snapshots))
            return reservation

        self.setattr(EC2Backend, "run_instances", run_and_tell)
        sfn_aws_casing(self)
        inherit_source_version(self)
        delete_launch_template_versions(self)

    def uninstall(self) -> None:
        while self.saved:
            owner, name, original = self.saved.pop()
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)


@dataclass
class World:
    parameters: dict[str, str] = field(default_factory=dict)
    base: Path | None = None
    # None: real nodes when this machine can run them; False: dry-run nodes.
    real_nodes: bool | None = None
    on_delivery: Callable[[Delivery], None] | None = None
    physical_names: dict[str, str] = field(default_factory=dict)
    # State machine logical id -> DefinitionSubstitutions in place of the template's. The builder checks its steps
    # every second rather than every 30 (its bound, MaxPolls checks, stays): the harness's clock is the real one.
    definition_substitutions: dict[str, dict[str, str]] = field(
        default_factory=lambda: {"WarmVolumeBuilder": {"PollSeconds": "1"}}
    )

    def __post_init__(self) -> None:
        self.instances: dict[str, Instance] = {}
        self.pushed: list[PushedImage] = []
        self.deliveries: list[Delivery] = []
        self.emitted: list[dict[str, Any]] = []  # every event put on the bus, in order
        self.fast_forwards = 0
        self.lose: Callable[[dict[str, Any]], bool] | None = None
        self.lost: list[dict[str, Any]] = []
        # Set by a signal handler: checked by settle(), because a KeyboardInterrupt raised inside a moto request can
        # be swallowed on its way out.
        self.interrupted = threading.Event()
        self.registry: EcrRegistry | None = None
        self.cleanups: list[Callable[[], None]] = []  # run on close, once the nodes are stopped (add_cleanup)
        # Told of each instance RunInstances creates other than World.launch's (a state machine's builder).
        self.on_launch: list[Callable[[Launched], None]] = []
        # Events of instances adopted off the main thread: put on the bus by settle() (the router is the main thread's).
        self.pending_events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._patches = _MotoPatches(self)
        self._mock: Any = None
        self._own_base = False
        self._saved_env: dict[str, str | None] = {}
        reason = missing_prerequisites()
        if self.real_nodes and reason:
            raise RuntimeError(f"real nodes asked for, but {reason}")
        self.dry_run_reason = "asked for dry-run nodes" if self.real_nodes is False else reason

    # --- lifecycle --------------------------------------------------------------------------------------------

    def __enter__(self) -> World:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def start(self) -> World:
        if self.base is None:
            self.base = Path(tempfile.mkdtemp(prefix="eks-prefetch-harness-"))
            self._own_base = True
        for key, value in {**FAKE_CREDENTIALS, "AWS_DEFAULT_REGION": REGION}.items():
            self._saved_env[key] = os.environ.get(key)
            os.environ[key] = value
        # moto runs the stack's state machines (aws-sdk integrations against this same mock). Its interpreter logs a
        # Choice's IsPresent on a missing path as an error, though the state goes on as AWS's does: the execution's
        # history, which the harness reads, keeps every real failure.
        logging.getLogger("moto.stepfunctions.parser.asl.component.eval_component").setLevel(logging.CRITICAL)
        self._mock = emulated_aws(run_state_machines=True)
        self._mock.start()
        self._patches.install()
        self.parameters = {**self.parameters, **self._account_parameters()}
        self.stack = Stack(
            self.parameters,
            physical_names=self.physical_names,
            definition_substitutions=self.definition_substitutions,
        ).create()
        self.agent = RunCommandAgent()
        self.agent.install()
        self.router = Router(self.stack, on_delivery=self._delivered)
        self.ec2 = boto3.client("ec2", region_name=REGION)
        self.ssm = boto3.client("ssm", region_name=REGION)
        self.ecr = boto3.client("ecr", region_name=REGION)
        self.sqs = boto3.client("sqs", region_name=REGION)
        self.logs = boto3.client("logs", region_name=REGION)
        for repository in self.stack.parameters["RepositoryNames"]:
            self.ecr.create_repository(repositoryName=repository)
        if self.dry_run_reason is None:
            self.registry = EcrRegistry(self.base / "registry").start()
        return self

    def close(self) -> None:
        agent = getattr(self, "agent", None)
        if agent is not None:
            agent.stop_starting()
        for instance in self.instances.values():
            if instance.proxy:
                instance.proxy.close()
            instance.node.stop()
        while self.cleanups:
            self.cleanups.pop()()
        if agent is not None:
            agent.uninstall()
        if self.registry is not None:
            self.registry.stop()
        self._patches.uninstall()
        if self._mock is not None:
            self._mock.stop()
            self._mock = None
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if self._own_base and self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)

    def _delivered(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        if self.on_delivery:
            self.on_delivery(delivery)

    def _account_parameters(self) -> dict[str, str]:
        """With WarmVolumes on, what only this account can give unless the caller did: the builder's subnet (the
        default VPC's first) and the nodes' AMI (the one every instance here launches from)."""
        if self.parameters.get("WarmVolumes") != "true":
            return {}
        ec2 = boto3.client("ec2", region_name=REGION)
        found: dict[str, str] = {}
        if not self.parameters.get("WarmBuilderSubnetId"):
            found["WarmBuilderSubnetId"] = ec2.describe_subnets()["Subnets"][0]["SubnetId"]
        if not self.parameters.get("WarmNodeAmi"):
            found["WarmNodeAmi"] = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        return found

    # --- settings ---------------------------------------------------------------------------------------------

    @property
    def node_tag(self) -> tuple[str, str]:
        environment = next(iter(self.stack.functions.values())).environment
        return environment["NODE_TAG_KEY"], environment["NODE_TAG_VALUE"]

    # --- EC2 --------------------------------------------------------------------------------------------------

    def launch(
        self,
        name: str,
        *,
        node: bool = True,
        register_after: float | None = 0.0,
        proxy: bool = False,
        tags: Mapping[str, str] | None = None,
        platform: Platform = LINUX,
        uname_machine: str | None = None,
        containerd_release: str | None = None,
        before_containerd: Callable[[Containerd], None] | None = None,
    ) -> str:
        """Run an EC2 instance (tagged as a cluster node or not, plus ``tags``: its node pool's), give it a node,
        register its SSM agent after ``register_after`` seconds (None: never), and emit its pending and running state
        changes. A node of another OS than Linux (``platform``) runs no containerd: SSM's precondition skips the
        document's step there. ``uname_machine``: the architecture its script sees, when not this machine's.
        ``containerd_release``: the node's containerd (default: harness.node's); ``before_containerd``: run on the node
        before its containerd first starts (a real node only)."""
        instance_tags = [{"Key": "Name", "Value": name}, *({"Key": k, "Value": v} for k, v in (tags or {}).items())]
        if node:
            key, value = self.node_tag
            instance_tags.append({"Key": key, "Value": value})
        image_id = self.ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        self._patches.local.launching = True
        try:
            (described,) = self.ec2.run_instances(
                ImageId=image_id,
                MinCount=1,
                MaxCount=1,
                InstanceType="m5.xlarge",
                TagSpecifications=[{"ResourceType": "instance", "Tags": instance_tags}],
            )["Instances"]
        finally:
            self._patches.local.launching = False
        instance_id = described["InstanceId"]
        self.adopt(
            instance_id,
            name,
            node=node,
            register_after=register_after,
            proxy=proxy,
            platform=platform,
            uname_machine=uname_machine,
            containerd_release=containerd_release,
            before_containerd=before_containerd,
        )
        return instance_id

    def adopt(
        self,
        instance_id: str,
        name: str,
        *,
        node: bool = False,
        register_after: float | None = 0.0,
        proxy: bool = False,
        platform: Platform = LINUX,
        uname_machine: str | None = None,
        containerd_release: str | None = None,
        before_containerd: Callable[[Containerd], None] | None = None,
    ) -> Instance:
        """Give an instance already in moto's EC2 its node, as World.launch does (its options), and register its
        agent. From another thread than the main one (a state machine's RunInstances), its state-change events wait
        in ``pending_events`` for settle()."""
        base = self.base / "nodes" / name
        if platform.type != "Linux":
            backing: Node | DryRunNode = DryRunNode(name, base, f"{platform.name}: no containerd to run").start()
        elif self.dry_run_reason is None:
            assert self.registry is not None
            backing = Node(
                name,
                base,
                self.registry,
                uname_machine=uname_machine,
                release=containerd_release,
                before_containerd=before_containerd,
            ).start()
        else:
            backing = DryRunNode(name, base, self.dry_run_reason).start()
        instance = Instance(instance_id, name, backing, node)
        if proxy and self.registry is not None:
            instance.proxy = RegistryProxy(self.registry.host)
            backing.route(instance.proxy.host)
        self.instances[instance_id] = instance
        self.agent.register(instance_id, backing, register_after, platform)
        main = threading.current_thread() is threading.main_thread()
        for state in ("pending", "running"):
            event = event_envelope(
                "aws.ec2",
                "EC2 Instance State-change Notification",
                {"instance-id": instance_id, "state": state},
                [f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/{instance_id}"],
            )
            if main:
                self.emit(event)
            else:
                self.pending_events.put(event)
        return instance

    def node_image(self) -> dict[str, Any]:
        """The AMI every instance launches from (DescribeImages' entry)."""
        return self.ec2.describe_images(Owners=["amazon"])["Images"][0]

    def add_cleanup(self, cleanup: Callable[[], None]) -> None:
        """Run on close, after every node has stopped (last added, first run): what outlives a node's processes,
        such as a volume mounted under its root."""
        self.cleanups.append(cleanup)

    def tags(self, instance_id: str) -> dict[str, str]:
        (reservation,) = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        return {tag["Key"]: tag["Value"] for tag in reservation["Instances"][0].get("Tags", [])}

    def nodes(self) -> list[Instance]:
        return [instance for instance in self.instances.values() if instance.is_node]

    # --- ECR --------------------------------------------------------------------------------------------------

    def push(
        self,
        repository: str,
        tag: str,
        layers_mb: list[float],
        based_on: str | None = None,
        emit: bool = True,
        index_for: str | None = None,
    ) -> PushedImage:
        """Build and push an image to the registry, record it in ECR (moto) with its real manifest and digest, and
        emit ECR's `ECR Image Action` event. ``index_for``: pushed as an index for that architecture only."""
        if self.registry is not None:
            image = self.registry.build_and_push(repository, tag, layers_mb, based_on, index_for=index_for)
        else:
            image = _paper_image(repository, tag, layers_mb)
        self.ecr.put_image(
            repositoryName=repository,
            imageManifest=image.manifest,
            imageManifestMediaType=image.media_type,
            imageTag=tag,
            imageDigest=image.digest,
        )
        self._order_push(repository, image.digest)
        self.pushed.append(image)
        if emit:
            self.emit(self.push_event(image))
        return image

    def _order_push(self, repository: str, digest: str) -> None:
        # moto stamps push times in whole seconds; two pushes within a second would tie, and resolution breaks ties
        # by digest, not by order. ECR's times are finer: keep each push a second after the one before.
        repo = ecr_backends[ACCOUNT][REGION].repositories[repository]
        previous = max((image.image_pushed_at for image in repo.images if image.image_digest != digest), default=0)
        for image in repo.images:
            if image.image_digest == digest:
                image.image_pushed_at = max(int(time.time()), int(previous) + 1)

    @staticmethod
    def push_event(image: PushedImage) -> dict[str, Any]:
        return event_envelope(
            "aws.ecr",
            "ECR Image Action",
            {
                "result": "SUCCESS",
                "repository-name": image.repository,
                "image-digest": image.digest,
                "action-type": "PUSH",
                "image-tag": image.tag,
                "manifest-media-type": image.media_type,
                "artifact-media-type": image.config_media_type,
            },
        )

    # --- running ----------------------------------------------------------------------------------------------

    def emit(self, event: dict[str, Any]) -> list[Delivery]:
        """Put an event on the bus; unless ``lose`` says EventBridge drops it (its delivery is best effort)."""
        self.emitted.append(event)
        if self.lose is not None and self.lose(event):
            self.lost.append(event)
            return []
        return self.router.emit(event)

    def settle(self, timeout: float = 300, tick: Callable[[], None] | None = None, fast_forward: bool = False) -> None:
        """Run until nothing is left to do: commands finished, their status events routed, queues drained. A
        message waiting out its visibility is waited for, or, with fast_forward, made visible as soon as nothing
        else is left to do (time passes; counted in self.fast_forwards)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.interrupted.is_set():
                raise KeyboardInterrupt
            busy = self.agent.busy()
            progressed = False
            while not self.pending_events.empty():
                self.emit(self.pending_events.get_nowait())
                progressed = True
            for event in self.agent.drain_events():
                self._ship_output(event)
                self.emit(event)
                progressed = True
            if self.router.pump():
                progressed = True
            if tick:
                tick()
            idle = not progressed and not busy and self.agent.events.empty()
            if idle and self.router.in_flight() == 0:
                return
            if idle and fast_forward:
                self.fast_forwards += self.router.fast_forward()
            if time.monotonic() > deadline:
                raise TimeoutError(f"not settled after {timeout:.0f} s")
            if not progressed:
                time.sleep(0.2)

    def _ship_output(self, event: dict[str, Any]) -> None:
        """The agent's CloudWatch output (CloudWatchOutputConfig): a finished invocation's whole stdout and stderr,
        in streams <command>/<instance>/<step>/stdout|stderr of the command's log group. From this thread: moto is
        called from the main thread only."""
        detail = event["detail"]
        if event["detail-type"] != "EC2 Command Invocation Status-change Notification" or detail["status"] not in {
            "Success",
            "Failed",
            "TimedOut",
        }:
            return
        command = self.agent.commands[detail["command-id"]]
        config = command.request.get("CloudWatchOutputConfig") or {}
        if not config.get("CloudWatchOutputEnabled"):
            return
        group = config.get("CloudWatchLogGroupName") or f"/aws/ssm/{command.document_name}"
        invocation = command.invocations[detail["instance-id"]]
        (step,) = command.content["mainSteps"]
        existing = {g["logGroupName"] for g in self.logs.describe_log_groups(logGroupNamePrefix=group)["logGroups"]}
        if group not in existing:
            self.logs.create_log_group(logGroupName=group)  # the agent creates it, as SSM does
        now = int(time.time() * 1000)
        for kind, text in (("stdout", invocation.full_stdout), ("stderr", invocation.full_stderr)):
            if not text:
                continue
            stream = f"{command.command_id}/{invocation.instance_id}/{step['name']}/{kind}"
            self.logs.create_log_stream(logGroupName=group, logStreamName=stream)
            lines = [{"timestamp": now, "message": line} for line in text.splitlines() if line]
            if lines:
                self.logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=lines)

    def output_log_lines(self, command_id: str, instance_id: str) -> list[str]:
        """The stdout lines CloudWatch Logs holds for one invocation."""
        command = self.agent.commands[command_id]
        group = command.request["CloudWatchOutputConfig"]["CloudWatchLogGroupName"]
        (step,) = command.content["mainSteps"]
        stream = f"{command_id}/{instance_id}/{step['name']}/stdout"
        events = self.logs.get_log_events(logGroupName=group, logStreamName=stream, startFromHead=True)["events"]
        return [event["message"] for event in events]

    def invocation(self, command_id: str, instance_id: str) -> dict[str, Any]:
        return self.ssm.get_command_invocation(CommandId=command_id, InstanceId=instance_id)

    def commands(self) -> list[dict[str, Any]]:
        return self.ssm.list_commands()["Commands"]

    def queue_messages(self, logical_id: str) -> list[dict[str, Any]]:
        """The messages in one of the stack's queues (received and released at once: for reading only)."""
        url = self.stack.queue_url(logical_id)
        messages = self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0).get(
            "Messages", []
        )
        return [json.loads(message["Body"]) for message in messages]


def _paper_image(repository: str, tag: str, layers_mb: list[float]) -> PushedImage:
    """A manifest without blobs, for dry runs: real digest of the manifest it records, nothing to pull."""
    layers = [
        {
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "size": int(size * 1024 * 1024),
            "digest": "sha256:" + hashlib.sha256(f"{repository}:{tag}:{index}".encode()).hexdigest(),
        }
        for index, size in enumerate(layers_mb)
    ]
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "size": 2,
                "digest": "sha256:" + hashlib.sha256(f"{repository}:{tag}:{datetime.now(UTC)}".encode()).hexdigest(),
            },
            "layers": layers,
        }
    )
    return PushedImage(
        repository=repository,
        tag=tag,
        digest="sha256:" + hashlib.sha256(manifest.encode()).hexdigest(),
        manifest=manifest,
        media_type="application/vnd.oci.image.manifest.v1+json",
        config_media_type="application/vnd.oci.image.config.v1+json",
        size=sum(layer["size"] for layer in layers),
    )
