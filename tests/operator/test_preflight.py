"""`make preflight` (prefetchctl.preflight) against moto: a deployed cluster that is ready, then with each finding
seeded (a missing repository, an offline and an unregistered node, a role without the policies, no endpoints), and
roles whose inline policies grant what nodes need, or fall short of it.

Doubles (testing/): ``DeployedStacks`` answers DescribeStacks (moto's CloudFormation needs extras
not installed); ``ManagedInstances`` answers SSM DescribeInstanceInformation (not implemented by moto). ECR, EC2
(instances, VPC endpoints) and IAM (profiles, roles, attached and inline policies) are moto's.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import boto3
import pytest
from botocore.exceptions import ClientError
from moto.iam.aws_managed_policies import aws_managed_policies_data
from moto.iam.models import AWSManagedPolicy, iam_backends

from eks_prefetch import aws
from eks_prefetch.node_contract import AUTO_MODE_NODE, AUTO_MODE_TAG
from prefetchctl import preflight
from prefetchctl.node_role import SSM_CORE, allowed
from testing.cloudformation import DeployedStacks
from testing.ecr import digest_of
from testing.environment import ACCOUNT, REGION
from testing.ssm import ManagedInstances

STACK = "prefetch-prod"
CLUSTER = "ml-prod"
GB = 1_000_000_000
AWS_POLICY = "arn:aws:iam::aws:policy/"
LOG_GROUP = f"/aws/ssm/{STACK}/prefetch"
LOGS_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "logs:PutLogEvents", "Resource": "arn:aws:logs:*:*:log-group:x:*"}],
}


def push(repository: str, tag: str, size: int) -> None:
    """An image of this compressed size (moto reports the manifest config's size as the image's)."""
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": size,
            "digest": digest_of(tag),
        },
        "layers": [],
    }
    boto3.client("ecr").put_image(
        repositoryName=repository,
        imageManifest=json.dumps(manifest),
        imageTag=tag,
        imageDigest=digest_of(repository + tag),
    )


@dataclass
class Cluster:
    """What a ready deployment has: repositories with images, tagged nodes online, their role with the policies,
    the VPC with the ECR and S3 endpoints."""

    managed: ManagedInstances
    stacks: DeployedStacks
    node_policy: str
    vpc: str
    subnet: str
    profile: str
    role: str
    nodes: list[dict] = field(default_factory=list)

    def launch(
        self, count: int, profile: str | None = None, registered: str | None = "Online", tags: dict | None = None
    ) -> list[dict]:
        extra = {"IamInstanceProfile": {"Arn": profile or self.profile}} if profile != "" else {}
        node_tags = [{"Key": "eks:cluster-name", "Value": CLUSTER}] + [
            {"Key": key, "Value": value} for key, value in (tags or {}).items()
        ]
        # One at a time: moto gives the instance profile to the first instance of a multi-instance launch only.
        instances = [
            boto3.client("ec2").run_instances(
                ImageId="ami-12c6146b",
                MinCount=1,
                MaxCount=1,
                SubnetId=self.subnet,
                TagSpecifications=[{"ResourceType": "instance", "Tags": node_tags}],
                **extra,
            )["Instances"][0]
            for _ in range(count)
        ]
        for instance in instances:
            if registered:
                self.managed.register(instance["InstanceId"], registered)
        self.nodes.extend(instances)
        return instances

    def deploy(self, repositories: str = "ml/trainer,ml/inference", selectors: str = "") -> None:
        self.stacks.exists(
            STACK,
            {"NodeRolePolicyArn": self.node_policy, "CommandOutputLogGroupName": LOG_GROUP, "UnpinDocumentName": "doc"},
            {
                "ClusterName": CLUSTER,
                "RepositoryNames": repositories,
                "NodeTagKey": "eks:cluster-name",
                "NodeTagValue": "",
                "RepositoryNodeSelectors": selectors,
            },
        )


def node_role(name: str, policies: list[str]) -> tuple[str, str]:
    iam = boto3.client("iam")
    iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(LOGS_POLICY))
    for policy in policies:
        iam.attach_role_policy(RoleName=name, PolicyArn=policy)
    profile = iam.create_instance_profile(InstanceProfileName=f"{name}-profile")["InstanceProfile"]["Arn"]
    iam.add_role_to_instance_profile(InstanceProfileName=f"{name}-profile", RoleName=name)
    return profile, name


def aws_managed_policies(*names: str) -> None:
    """AWS's own managed policies, from moto's copy of them: moto loads all of them (slowly) or, by default, none."""
    backend = iam_backends[ACCOUNT]["aws"]
    data = json.loads(aws_managed_policies_data)
    for name in names:
        policy = AWSManagedPolicy.from_data(name, ACCOUNT, "aws", data[name])
        backend.managed_policies[policy.arn] = policy


@pytest.fixture
def cluster(aws_mock: None, monkeypatch: pytest.MonkeyPatch) -> Cluster:
    aws_managed_policies("AmazonSSMManagedInstanceCore", "AmazonEC2ContainerRegistryReadOnly")
    ecr, ec2, iam = boto3.client("ecr"), boto3.client("ec2"), boto3.client("iam")
    for repository, size in (("ml/trainer", 3 * GB), ("ml/inference", GB // 2)):
        ecr.create_repository(repositoryName=repository)
        push(repository, "v1", size)
    node_policy = iam.create_policy(PolicyName="prefetch-NodeRolePolicy", PolicyDocument=json.dumps(LOGS_POLICY))[
        "Policy"
    ]["Arn"]
    profile, role = node_role(
        "eks-nodes",
        [
            f"{AWS_POLICY}AmazonSSMManagedInstanceCore",
            f"{AWS_POLICY}AmazonEC2ContainerRegistryReadOnly",
            node_policy,
        ],
    )
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    world = Cluster(ManagedInstances(monkeypatch), DeployedStacks(), node_policy, vpc, subnet, profile, role)
    return world


def endpoints(cluster: Cluster, services: tuple[str, ...]) -> None:
    ec2 = boto3.client("ec2")
    for service in services:
        kind = "Gateway" if service == "s3" else "Interface"
        ec2.create_vpc_endpoint(
            VpcId=cluster.vpc, ServiceName=f"com.amazonaws.{REGION}.{service}", VpcEndpointType=kind
        )


def run() -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = preflight.main(["--stack", STACK], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_a_ready_deployment_exits_zero(cluster: Cluster) -> None:
    cluster.launch(3)
    endpoints(cluster, ("ecr.api", "ecr.dkr", "s3", "ssm", "ssmmessages", "ec2messages", "logs"))
    cluster.deploy()

    code, out, err = run()

    assert (code, err) == (0, ""), out
    assert out.splitlines() == [
        f"preflight of stack {STACK} (cluster {CLUSTER}, {REGION}): ready",
        "  nodes per repository: ml/trainer 3 (every node), ml/inference 3 (every node)",
        f"  2 repositories with a matching image; 3 running node(s), all online with the policies they need; "
        f"ECR and S3 endpoints in {cluster.vpc}",
    ]
    # The managed nodes are asked by the node tag, whatever their ping status.
    assert cluster.managed.requests == [[{"Key": "tag:eks:cluster-name", "Values": [CLUSTER]}]]


def test_each_seeded_finding_is_named_with_what_to_do(cluster: Cluster) -> None:
    online = cluster.launch(2)
    lost = cluster.launch(1, registered="ConnectionLost")
    bare_profile, bare_role = node_role("bare-nodes", [f"{AWS_POLICY}AmazonEC2ContainerRegistryReadOnly"])
    never = cluster.launch(1, profile=bare_profile, registered=None)
    # No endpoints at all, and a repository name with a typo.
    cluster.deploy("ml/trainer,ml/trainr")

    code, out, err = run()

    assert (code, err) == (1, ""), out
    assert out.splitlines()[0] == f"preflight of stack {STACK} (cluster {CLUSTER}, {REGION}): 5 finding(s)"
    blocks = {block.splitlines()[0]: block for block in out.split("\n\n")[1:]}
    assert blocks["[repository] ml/trainr"].splitlines()[1:] == [
        f"  problem: no such ECR repository in {REGION} (this account): pushes to it never prefetch",
        "  do:      correct the name (sam deploy --parameter-overrides RepositoryNames=...) or create the repository",
    ]
    lost_node = f"{lost[0]['PrivateDnsName']} ({lost[0]['InstanceId']})"
    assert f"[nodes] {lost_node}" in blocks
    assert (
        "problem: SSM agent ConnectionLost since 2026-11-01T11:00:00+00:00: the agent is not running, or cannot "
        f"reach SSM: {cluster.vpc} has no ssm, ssmmessages, ec2messages endpoint(s)" in blocks[f"[nodes] {lost_node}"]
    )
    never_node = f"{never[0]['PrivateDnsName']} ({never[0]['InstanceId']})"
    assert (
        "problem: SSM does not know these nodes (agent never registered): its instance profile lacks SSM permissions "
        "(AmazonSSMManagedInstanceCore is not attached to its role, nor what it grants granted by its other policies)"
    ) in blocks[f"[nodes] {never_node}"]
    # The role without the policies, with the commands that attach them.
    (role_block,) = [block for title, block in blocks.items() if title.startswith(f"[roles] role {bare_role} ")]
    assert f"not attached: AmazonSSMManagedInstanceCore, NodeRolePolicyArn ({cluster.node_policy})" in role_block
    assert (
        f"aws iam attach-role-policy --role-name {bare_role} --policy-arn {AWS_POLICY}AmazonSSMManagedInstanceCore"
        in role_block
    )
    assert f"aws iam attach-role-policy --role-name {bare_role} --policy-arn {cluster.node_policy}" in role_block
    assert not any(title.startswith(f"[roles] role {cluster.role} ") for title in blocks)
    # No endpoints: the NAT cost of one push at the current fleet (4 nodes) and image sizes.
    network = blocks[f"[network] {cluster.vpc}"]
    assert "no ecr.api, ecr.dkr, s3 endpoint(s): image layers go through the NAT gateway" in network
    assert "at 4 node(s)" in network
    assert "ml/trainer:v1 $0.54" in network  # 3 GB x 4 nodes x $0.045
    assert all(node["InstanceId"] not in out for node in online)


# The tags EKS Auto Mode launches its instances with (its cluster role's tag policy).
AUTO_MODE_TAGS = {"eks:eks-cluster-name": CLUSTER, AUTO_MODE_TAG: "default", "eks:kubernetes-node-pool-name": "general"}


def test_eks_auto_mode_nodes_are_named_as_left_out_not_as_findings(cluster: Cluster) -> None:
    """An Auto Mode node carrying the node tag never registers with SSM (AWS allows none on it): no finding to fix,
    a line saying it is left out, as Windows nodes are."""
    cluster.launch(2)
    (auto_mode,) = cluster.launch(1, registered=None, tags=AUTO_MODE_TAGS)
    endpoints(cluster, ("ecr.api", "ecr.dkr", "s3", "ssm", "ssmmessages", "ec2messages", "logs"))
    cluster.deploy()

    code, out, err = run()

    assert (code, err) == (0, ""), out
    assert out.splitlines() == [
        f"preflight of stack {STACK} (cluster {CLUSTER}, {REGION}): ready",
        "  nodes per repository: ml/trainer 2 (every node), ml/inference 2 (every node)",
        f"  2 repositories with a matching image; 2 running node(s), all online with the policies they need; "
        f"ECR and S3 endpoints in {cluster.vpc}",
        f"  left out: 1 node(s), {AUTO_MODE_NODE}: {auto_mode['PrivateDnsName']} ({auto_mode['InstanceId']})",
    ]


def test_a_cluster_of_eks_auto_mode_nodes_only_is_a_finding(cluster: Cluster) -> None:
    cluster.launch(2, registered=None, tags=AUTO_MODE_TAGS)
    endpoints(cluster, ("ecr.api", "ecr.dkr", "s3"))
    cluster.deploy()

    code, out, _err = run()

    assert code == 1
    assert (
        f"[nodes] tag eks:cluster-name={CLUSTER}\n  problem: every running instance carrying the node tag is left out "
        f"({AUTO_MODE_NODE}): no node gets a prefetch"
    ) in out
    assert "agent never registered" not in out


def test_no_tagged_node_and_a_repository_without_matching_image(cluster: Cluster) -> None:
    boto3.client("ecr").create_repository(repositoryName="ml/empty")
    endpoints(cluster, ("ecr.api", "ecr.dkr", "s3"))
    cluster.deploy("ml/trainer,ml/empty")

    code, out, _err = run()

    assert code == 1
    assert "[repository] ml/empty\n  problem: no image has a tag matching TagFilter" in out
    assert "[nodes] tag eks:cluster-name=ml-prod\n  problem: no running instance carries the node tag" in out


def test_an_unreadable_stack_exits_two(aws_mock: None) -> None:
    DeployedStacks().missing(STACK)

    code, out, err = run()

    assert (code, out) == (2, "")
    assert err.startswith(f"cannot read the stack {STACK}: ")


# --- inline policies ------------------------------------------------------------------------------------------------

GROUP = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:"
# What the three needs come to inline: the agent by ssmmessages, pulls of the watched repositories, the output log.
INLINE_GRANTS = [
    {"Effect": "Allow", "Action": ["ssm:UpdateInstanceInformation", "ssmmessages:*Channel"], "Resource": "*"},
    {"Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"},
    {
        "Effect": "Allow",
        "Action": ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"],
        "Resource": f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/ml/*",
    },
    {
        "Effect": "Allow",
        "Action": ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
        "Resource": f"{GROUP}{LOG_GROUP}:*",
    },
    {"Effect": "Allow", "Action": "logs:DescribeLogGroups", "Resource": "*"},
]


def inline_role(name: str, *policies: dict) -> str:
    """A node role with no attached policy, only these inline ones; its instance profile's ARN."""
    profile, _role = node_role(name, [])
    for number, statements in enumerate(policies):
        boto3.client("iam").put_role_policy(
            RoleName=name,
            PolicyName=f"inline-{number}",
            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": statements}),
        )
    return profile


def test_a_role_granting_what_nodes_need_inline_has_no_finding(cluster: Cluster) -> None:
    # Split over two inline policies: what counts is what the role's policies grant together.
    profile = inline_role("inline-nodes", INLINE_GRANTS[:2], INLINE_GRANTS[2:])
    cluster.launch(2, profile=profile)
    endpoints(cluster, ("ecr.api", "ecr.dkr", "s3"))
    cluster.deploy()

    code, out, err = run()

    assert (code, err) == (0, ""), out
    assert out.splitlines()[0].endswith(": ready")


def test_an_inline_policy_short_of_the_needs_is_a_finding_naming_what_it_lacks(cluster: Cluster) -> None:
    """ec2messages half granted (and no ssmmessages), ECR for one repository of two, the log written to another
    group, and a Deny over the agent's registration: each lacking grant named, with the attach commands."""
    short = [
        {"Effect": "Allow", "Action": ["ssm:*", "ec2messages:GetMessages", "ec2messages:SendReply"], "Resource": "*"},
        {"Effect": "Deny", "Action": "ssm:UpdateInstanceInformation", "Resource": "*"},
        {"Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"},
        {
            "Effect": "Allow",
            "Action": ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"],
            "Resource": f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/ml/trainer",
        },
        {"Effect": "Allow", "NotAction": "logs:Delete*", "Resource": f"{GROUP}/aws/ssm/other/*"},
    ]
    profile = inline_role("short-nodes", short)
    (node,) = cluster.launch(1, profile=profile, registered=None)
    endpoints(cluster, ("ecr.api", "ecr.dkr", "s3", "ssm", "ssmmessages", "ec2messages"))
    cluster.deploy()

    code, out, _err = run()

    assert code == 1, out
    blocks = {block.splitlines()[0]: block for block in out.split("\n\n")[1:]}
    (role,) = [block for title, block in blocks.items() if title.startswith("[roles] role short-nodes ")]
    problem, fix = role.splitlines()[1:]
    assert problem == (
        "  problem: not attached: AmazonSSMManagedInstanceCore, AmazonEC2ContainerRegistryReadOnly, "
        f"NodeRolePolicyArn ({cluster.node_policy}); nor granted by its other policies (attached and inline), "
        "which lack ssm:UpdateInstanceInformation, ssmmessages:CreateControlChannel, "
        "ssmmessages:OpenControlChannel on *; "
        f"ecr:BatchGetImage, ecr:GetDownloadUrlForLayer on arn:aws:ecr:{REGION}:{ACCOUNT}:repository/ml/inference; "
        f"logs:CreateLogStream, logs:DescribeLogStreams on {GROUP}{LOG_GROUP}:*; "
        f"logs:PutLogEvents on {GROUP}{LOG_GROUP}:log-stream:*; logs:DescribeLogGroups on {GROUP}*"
    )
    assert fix.startswith(
        f"  do:      aws iam attach-role-policy --role-name short-nodes --policy-arn {AWS_POLICY}{SSM_CORE}; "
    )
    assert fix.endswith(f"--policy-arn {cluster.node_policy} (or grant what is lacking in a policy of the role)")
    # The node the role keeps from registering is told apart from one whose agent merely is not running.
    node_block = blocks[f"[nodes] {node['PrivateDnsName']} ({node['InstanceId']})"]
    assert "its instance profile lacks SSM permissions" in node_block


@pytest.mark.parametrize(
    ("statement", "granted"),
    [
        ({"Effect": "Allow", "Action": "ECR:batchgetimage", "Resource": "arn:aws:ecr:*:*:repository/ml/*"}, True),
        ({"Effect": "Allow", "Action": "ecr:*", "Resource": "arn:aws:ecr:*:*:repository/ml/t?ainer"}, True),
        ({"Effect": "Allow", "Action": "ecr:*", "Resource": "arn:aws:ecr:*:*:repository/ML/*"}, False),
        ({"Effect": "Allow", "NotAction": "ecr:Batch*", "Resource": "*"}, False),
        ({"Effect": "Allow", "Action": "*", "NotResource": "arn:aws:ecr:*:*:repository/ml/trainer"}, False),
        (
            {"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"Bool": {"aws:SecureTransport": "true"}}},
            True,
        ),
        ({"Effect": "Allow", "Action": "ecr:BatchGetImage"}, False),  # no Resource: grants nothing
    ],
)
def test_how_an_inline_statement_is_read(statement: dict, granted: bool) -> None:
    resource = "arn:aws:ecr:us-east-1:123456789012:repository/ml/trainer"

    assert allowed([{"Statement": [statement]}], "ecr:BatchGetImage", resource) is granted


# --- attached policies, by what they grant ----------------------------------------------------------------------------


def managed_role(name: str, *documents: dict, aws_policies: tuple[str, ...] = ()) -> str:
    """A node role whose permissions come only from attached managed policies: these customer-managed ones (one
    per document), and AWS managed ones by name; its instance profile's ARN."""
    iam = boto3.client("iam")
    arns = [f"{AWS_POLICY}{policy}" for policy in aws_policies]
    for number, statements in enumerate(documents):
        document = json.dumps({"Version": "2012-10-17", "Statement": statements})
        arns.append(iam.create_policy(PolicyName=f"{name}-{number}", PolicyDocument=document)["Policy"]["Arn"])
    profile, _role = node_role(name, arns)
    return profile


def test_a_customer_managed_policy_granting_what_nodes_need_is_no_finding(cluster: Cluster) -> None:
    """The nodes are online and pulling: their role has no AWS managed policy and no inline one, but a policy of the
    account's own that grants everything. That is no "not attached" finding (it was, exit 1)."""
    profile = managed_role("platform-nodes", INLINE_GRANTS)
    cluster.launch(2, profile=profile)
    endpoints(cluster, ("ecr.api", "ecr.dkr", "s3"))
    cluster.deploy()

    code, out, err = run()

    assert (code, err) == (0, ""), out
    assert out.splitlines()[0].endswith(": ready")


def test_an_aws_managed_policy_not_named_here_counts_by_what_it_grants(cluster: Cluster) -> None:
    """AdministratorAccess (not one of the policies the prerequisites name) grants all the nodes need."""
    aws_managed_policies("AdministratorAccess")
    profile = managed_role("admin-nodes", aws_policies=("AdministratorAccess",))
    cluster.launch(1, profile=profile)
    endpoints(cluster, ("ecr.api", "ecr.dkr", "s3"))
    cluster.deploy()

    code, out, err = run()

    assert (code, err) == (0, ""), out


def test_attached_policies_short_of_the_needs_name_what_they_lack(cluster: Cluster) -> None:
    """A customer-managed policy granting ECR pulls of one repository of two, and the output log: the finding names
    the missing agent permissions and the other repository, not what the policy grants."""
    profile = managed_role(
        "narrow-nodes",
        INLINE_GRANTS[1:2],
        INLINE_GRANTS[3:],
        [{**INLINE_GRANTS[2], "Resource": (f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/ml/trainer")}],
    )
    cluster.launch(1, profile=profile)
    endpoints(cluster, ("ecr.api", "ecr.dkr", "s3"))
    cluster.deploy()

    code, out, _err = run()

    assert code == 1, out
    blocks = {block.splitlines()[0]: block for block in out.split("\n\n")[1:]}
    (role,) = [block for title, block in blocks.items() if title.startswith("[roles] role narrow-nodes ")]
    problem = role.splitlines()[1]
    assert problem == (
        "  problem: not attached: AmazonSSMManagedInstanceCore, AmazonEC2ContainerRegistryReadOnly; nor granted by "
        "its other policies (attached and inline), which lack ssm:UpdateInstanceInformation, "
        "ssmmessages:CreateControlChannel, ssmmessages:OpenControlChannel on *; ecr:BatchGetImage, "
        f"ecr:GetDownloadUrlForLayer on arn:aws:ecr:{REGION}:{ACCOUNT}:repository/ml/inference"
    )


def test_a_policy_whose_document_cannot_be_read_is_said_so(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """Double: IAM denies GetPolicyVersion on one policy (moto allows everything). The finding cannot tell whether
    that policy grants what is lacking, and says so; the run exits 2 (part of what is checked is unreadable)."""
    profile = managed_role("hidden-nodes", INLINE_GRANTS)
    (hidden,) = [
        policy["PolicyArn"]
        for policy in boto3.client("iam").list_attached_role_policies(RoleName="hidden-nodes")["AttachedPolicies"]
    ]
    reading = aws.iam.policy_document

    def denied(arn: str, iam: object = None) -> object:
        if arn == hidden:
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "not authorized"}}, "GetPolicyVersion")
        return reading(arn, iam)

    monkeypatch.setattr(aws.iam, "policy_document", denied)
    (node,) = cluster.launch(1, profile=profile, registered=None)
    endpoints(cluster, ("ecr.api", "ecr.dkr", "s3"))
    cluster.deploy()

    code, out, _err = run()

    assert code == 2, out
    assert f"not checked: the document of policy {hidden} (iam:GetPolicy, iam:GetPolicyVersion): " in out
    (role,) = [block for block in out.split("\n\n") if block.startswith("[roles] role hidden-nodes ")]
    assert f"; not read: {hidden}, which may grant it" in role
    (agent,) = [block for block in out.split("\n\n") if block.startswith(f"[nodes] {node['PrivateDnsName']}")]
    assert f"granted by its other policies; unless {hidden}, not read, grants it)" in agent


# --- node selectors -------------------------------------------------------------------------------------------------


def test_each_repository_reports_the_nodes_its_selector_matches(cluster: Cluster) -> None:
    cluster.launch(1, tags={"karpenter.sh/nodepool": "gpu-a"})
    cluster.launch(2, tags={"karpenter.sh/nodepool": "cpu"})
    endpoints(cluster, ("ecr.api", "ecr.dkr", "s3"))
    cluster.deploy(selectors=json.dumps({"ml/trainer": {"karpenter.sh/nodepool": ["gpu-a", "gpu-b"]}}))

    code, out, err = run()

    assert (code, err) == (0, ""), out
    assert out.splitlines()[1] == (
        "  nodes per repository: ml/trainer 1 (karpenter.sh/nodepool=gpu-a|gpu-b), ml/inference 3 (every node)"
    )


def test_a_selector_matching_no_running_node_is_a_finding(cluster: Cluster) -> None:
    """A typo in a node pool's name: the deploy accepted it (any tag value may exist), and ml/trainer is then
    prefetched nowhere. That was "ready", exit 0."""
    cluster.launch(2, tags={"karpenter.sh/nodepool": "gpu-a"})
    endpoints(cluster, ("ecr.api", "ecr.dkr", "s3"))
    cluster.deploy(selectors=json.dumps({"ml/trainer": {"karpenter.sh/nodepool": "gpu-A", "team": "ml"}}))

    code, out, _err = run()

    assert code == 1, out
    assert out.splitlines()[:2] == [
        f"preflight of stack {STACK} (cluster {CLUSTER}, {REGION}): 1 finding(s)",
        "  nodes per repository: ml/trainer 0 (karpenter.sh/nodepool=gpu-A, team=ml), ml/inference 2 (every node)",
    ]
    (block,) = [block for block in out.split("\n\n") if block.startswith("[selectors] ml/trainer")]
    problem, fix = block.splitlines()[1:]
    assert problem == (
        "  problem: RepositoryNodeSelectors selects no running node of the cluster (karpenter.sh/nodepool=gpu-A, "
        "team=ml): its images are prefetched nowhere; the running nodes have karpenter.sh/nodepool=gpu-a, no team tag"
    )
    assert fix == (
        "  do:      correct the selector to the nodes' tags (sam deploy --parameter-overrides "
        "RepositoryNodeSelectors=...), or remove it to prefetch ml/trainer on every node"
    )


def test_a_selector_the_functions_refuse_is_a_finding(cluster: Cluster) -> None:
    """A stack deployed before the deploy check refused it."""
    cluster.launch(1)
    endpoints(cluster, ("ecr.api", "ecr.dkr", "s3"))
    cluster.deploy(selectors=json.dumps({"ml/trainer": {"team+pool": "gpu"}}))

    code, out, _err = run()

    assert code == 1, out
    (block,) = [block for block in out.split("\n\n") if block.startswith("[selectors] RepositoryNodeSelectors")]
    assert "problem: RepositoryNodeSelectors['ml/trainer']: tag key 'team+pool' has '+'" in block
    assert "do:      correct it (sam deploy --parameter-overrides RepositoryNodeSelectors=...)" in block


def test_nodes_that_cannot_be_read_are_not_reported_as_absent(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Double: EC2 denies DescribeInstances (moto allows everything). Nothing is said of the nodes or the selectors'
    counts but that they could not be read: not "no running instance carries the node tag"."""

    def denied(*_args: object, **_kwargs: object) -> object:
        raise ClientError(
            {"Error": {"Code": "UnauthorizedOperation", "Message": "not authorized"}}, "DescribeInstances"
        )

    monkeypatch.setattr(aws.ec2, "running_instances", denied)
    cluster.deploy(selectors=json.dumps({"ml/trainer": {"karpenter.sh/nodepool": "gpu"}}))

    code, out, _err = run()

    assert code == 2, out
    assert out.splitlines()[:2] == [
        f"preflight of stack {STACK} (cluster {CLUSTER}, {REGION}): 0 finding(s)",
        "  nodes per repository: not known (the nodes could not be read: see below)",
    ]
    assert "[nodes]" not in out and "[selectors]" not in out
    assert "not checked: the nodes (ec2:DescribeInstances, ssm:DescribeInstanceInformation): " in out
