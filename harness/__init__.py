"""Local harness: the stack emulated from template.yaml (moto in-process), its event routing, a local Run Command
agent and real containerd nodes. For tests and `make demo`; never deployed (no CodeUri points here)."""
