"""Warm boot volumes (docs/warm-volumes.md): when to build a snapshot of the images (``planner``), the build's claim
and timestamps in the status table (``state``), and retention and the builders left behind (``cleanup``)."""
