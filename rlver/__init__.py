"""rlver: RLVER (reinforcement learning with verifiable emotion rewards) as a workflow."""

__version__ = "0.1.0"
