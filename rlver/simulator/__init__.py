"""Simulated users: one protocol (`protocol.py`), several backends behind one interface.

A backend (`base.Simulator`) answers in the paper's two steps, batched over all live
dialogues: `feel` says how the persona feels about the latest assistant reply (a
proposed integer change and its reason); the protocol applies it; `speak` writes the
persona's next message in character for the new emotion (or its farewell when the
dialogue ends). `make_simulator` builds the backend the config names.
"""

from __future__ import annotations

from typing import Any

from rlver.simulator.base import Feeling, Message, SimRequest, Simulator, Utterance

__all__ = ["Feeling", "Message", "SimRequest", "Simulator", "Utterance", "make_simulator"]


def make_simulator(cfg: Any, run: Any = None) -> Simulator:
    """The backend named by `simulator.backend`, built from the `simulator` config group;
    `run` (a rlver.layout.Run): the run whose served simulator `served` talks to."""
    if cfg.backend == "heuristic":
        from rlver.simulator.heuristic import HeuristicSimulator

        return HeuristicSimulator(difficulty=cfg.difficulty)
    # LLM backends import lazily: vllm is optional and slow to import.
    if cfg.backend == "llm_http":
        from rlver.completions import OpenAIHTTPBackend
        from rlver.simulator.llm import LLMSimulator

        return LLMSimulator(cfg, OpenAIHTTPBackend.from_config(cfg))
    if cfg.backend == "llm_vllm":
        from rlver.completions import VLLMEngineBackend
        from rlver.simulator.llm import LLMSimulator

        return LLMSimulator(cfg, VLLMEngineBackend.from_config(cfg))
    if cfg.backend == "served":
        from rlver.served.client import ServedBackend
        from rlver.simulator.llm import LLMSimulator

        if run is None:
            raise ValueError("the served simulator needs the run it belongs to")
        return LLMSimulator(cfg, ServedBackend(cfg, run))
    raise ValueError(f"unknown simulator backend {cfg.backend!r}")
