"""Local harness: the stack emulated from template.yaml (moto in-process), its event routing, a local Run Command
agent and real containerd nodes. For tests and `make demo`; never deployed (no CodeUri points here)."""

import sys
from pathlib import Path

# The layer's package (the harness shares node_contract with it), as pytest's pythonpath has it, so that
# `python -m harness.demo` runs from the repository root.
_LAYER = str(Path(__file__).resolve().parent.parent / "layers" / "prefetch")
if _LAYER not in sys.path:
    sys.path.insert(0, _LAYER)
