from harness.template import *  # noqa: F403 - moved to harness/template.py; the lead removes this shim
