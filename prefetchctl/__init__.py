"""The operator's commands for a deployed stack, run from a workstation (not shipped in the Lambda layer):
``python -m prefetchctl status|preflight|unpin --stack <name> [--region <region>]`` (``make status``, ``make
preflight``, ``make unpin``). They read the stack with the layer's own code (eks_prefetch on PYTHONPATH)."""
