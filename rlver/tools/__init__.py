"""Tools beside the workflow: `benchmark_logs` (`rlver score`: one metric for SAGE logs
and our evaluation files) and `calibrate` (`rlver calibrate`: a simulator against logged
emotion changes)."""
