"""`make bench` (python -m bench): every figure of the project next to its target and its baseline, measured in the
same run, written to BENCHMARKS.md. One module per section; see bench/__main__.py for the list."""
