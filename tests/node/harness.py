from harness.node import *  # noqa: F403 - moved to harness/node.py; the lead removes this shim
