"""Simulator health: the endpoint checked before the first dialogue, and the share of
simulator turns that fell back (`rlver.fallbacks`), checked after the last.

A turn falls back when the simulator gave no usable feeling after its retries (HTTP
errors, timeouts, dropped connections, unparsable answers): the protocol then applies
delta 0, so a dead or broken endpoint would otherwise train on constant rewards. The
rule-based simulator never falls back: its share is 0.
"""

from __future__ import annotations

import sys
from typing import Any

from rlver.errors import RlverInputError
from rlver.fallbacks import RATE_KEY


def endpoint(sim: Any) -> str:
    """What the `simulator` config group talks to, for messages."""
    if sim.backend == "llm_http":
        return f"{sim.base_url} (model {sim.model!r})"
    if sim.backend == "served":
        return (f"the served simulated user ({sim.serve.model_path} as {sim.model!r}; "
                "results/<run>/simulator/endpoint.json, its log logs/simulator.log)")
    if sim.backend == "llm_vllm":
        return f"the in-process vLLM engine (model {sim.model!r})"
    return f"the {sim.backend} simulator"


def check_fallback_rate(stats: dict[str, Any], sim: Any, stage: str) -> None:
    """Refuse a stage whose share of fallen-back turns exceeds simulator.max_fallback_rate."""
    rate = stats[RATE_KEY]
    if rate <= sim.max_fallback_rate:
        return
    raise RlverInputError(
        f"{stage}: {stats['simulator_fallbacks']} of {stats['simulator_turns']} simulator "
        f"turns ({rate:.1%}) fell back (no usable answer after the retries), more than "
        f"simulator.max_fallback_rate={sim.max_fallback_rate:g}; endpoint {endpoint(sim)}; "
        "most common error "
        f"({stats['simulator_top_error_count']} turns): {stats['simulator_top_error']}. "
        "Fix: make the endpoint answer (is the server up, reachable from this node, serving "
        "that model, fast enough for simulator.timeout_s?), then rerun; raise "
        "simulator.max_fallback_rate only if these fallbacks are acceptable."
    )


def check_endpoint(sim: Any, run: Any = None) -> None:
    """An HTTP simulator's endpoint must answer before the first dialogue; other backends
    have none. Raises RlverInputError naming the endpoint, within simulator.timeout_s.
    A served simulator (of `run`, a rlver.layout.Run) must be running or starting; the
    first simulator call waits for it to answer."""
    if sim.backend == "served":
        from rlver.served.client import endpoint as served_endpoint

        state = served_endpoint(run, sim).check()["state"]
        print(f"simulator: served simulated user of {run.root}: {state}", file=sys.stderr)
        return
    if sim.backend != "llm_http":
        return
    from rlver.completions import OpenAIHTTPBackend

    problem = OpenAIHTTPBackend.from_config(sim).probe()
    if problem:
        raise RlverInputError(
            f"simulator endpoint {endpoint(sim)} is not usable: {problem}. Fix: start the "
            "server (or correct simulator.base_url) so that GET "
            f"{sim.base_url.rstrip('/')}/models answers from this node, then rerun."
        )


#: The workflow's look at the endpoint is a hint, not the check: it must never hold up a
#: dry run.
NOTE_TIMEOUT_S = 3.0


def workflow_note(sim: Any) -> str:
    """What `snakemake` (a dry run too) says about an HTTP or served simulator: the
    endpoint the rollout and evaluate jobs will need, and whether it answers from here
    now; the server the workflow starts. "" for backends without an endpoint."""
    if sim.backend == "served":
        serve = sim.serve
        return (f"rlver: the simulated user is served by the workflow: {serve.replicas} "
                f"vLLM server(s) of {serve.model_path} as {sim.model!r}, "
                f"{serve.gpus} GPU(s) each, started when a job needs it and stopped when "
                "snakemake ends (results/<run>/simulator/endpoint.json).")
    if sim.backend != "llm_http":
        return ""
    from rlver.completions import OpenAIHTTPBackend

    try:
        problem = OpenAIHTTPBackend.from_config(sim).probe(min(NOTE_TIMEOUT_S, sim.timeout_s))
        now = (f"NOT reachable from this machine now ({problem})" if problem
               else "reachable from this machine now")
    except RlverInputError as exc:  # e.g. the key's variable is set only in the jobs
        now = f"not checked from this machine ({exc})"
    return (f"rlver: the simulator is the HTTP endpoint {endpoint(sim)}; rollout and evaluate "
            "jobs need it reachable from their nodes and check it before their first "
            f"dialogue; {now}.")
