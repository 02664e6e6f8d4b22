"""What the tests, the harness and the benchmarks share to run the real handlers on this machine: a deployment on
moto, the events the functions receive, and one double for each AWS behaviour moto lacks.

- ``testing.environment``: moto's account and region, the stack's names and the functions' environment.
- ``testing.deployment``: moto with the idempotency and status tables as template.yaml defines them, the handlers
  and a Lambda context.
- ``testing.answers``: answering one operation of the code's own client at botocore's level, after the call was
  counted and its parameters validated, so that the adapters in ``eks_prefetch.aws`` run unchanged.
- ``testing.events``: the events as EventBridge delivers them (push, launch, command status, schedule).
- ``testing.ec2``, ``testing.ecr``: instances and images in moto, with the launch and push times a test chooses,
  and ECR's paging.
- ``testing.ssm``: ``Agents`` (ssm:DescribeInstanceInformation, not in moto) and ``FakeInvocations`` (moto's
  invocations are all Success with no output, and it has no ListCommandInvocations).
- ``testing.sqs``: Lambda's SQS event source on moto's wall clock (``SqsEventSource``, ``LaunchQueue``), which the
  harness's router uses too; ``testing.simulated_queue``: the same on a simulated ``testing.clock.Clock``.
- ``testing.output``: the node's output lines, and reading the metrics the functions print as EMF.
- ``testing.apicalls``: counting the API calls of the real code paths, and the scenarios the tests and
  `make bench` count.

The harness imports only ``testing.environment``, ``testing.events`` and ``testing.sqs``, which do not import the
application: it loads each function with its own layer, as Lambda does.
"""
