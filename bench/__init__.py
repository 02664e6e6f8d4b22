"""`make bench` (python -m bench): every figure of the project next to its target and its baseline, measured in the
same run, written to BENCHMARKS.md. One module per section; see bench/__main__.py for the list."""

import sys
from pathlib import Path

# The layer's package, as pytest's pythonpath has it, so that `python -m bench` runs from the repository root.
_LAYER = str(Path(__file__).resolve().parent.parent / "layers" / "prefetch")
if _LAYER not in sys.path:
    sys.path.insert(0, _LAYER)
