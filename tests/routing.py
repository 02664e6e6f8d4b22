from harness.routing import *  # noqa: F403 - moved to harness/routing.py; the lead removes this shim
