"""Simulator health: the endpoint checked before the first dialogue, and the share of
simulator turns that fell back, checked after the last.

A turn falls back when the simulator gave no usable feeling after its retries (HTTP
errors, timeouts, dropped connections, unparsable answers): the protocol then applies
delta 0, so a dead or broken endpoint would otherwise train on constant rewards. The
share comes from the trajectory rows (`parse_error` per turn, the error in `reason`), so
it is the same number for a stage that just ran and for a file read later. The
rule-based simulator never falls back: its share is 0.
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any

from rlver.errors import RlverInputError

#: Metric keys, in the stage's metrics (eval metrics.json, update metrics.json) and in a
#: rollout shard's Parquet metadata.
RATE_KEY = "simulator_fallback_rate"
#: The start of a fallback's reason (rlver.simulator.llm); the error follows "attempts: ".
_AFTER = "attempts: "
#: A message example is cut here: an error body can be long.
_MAX_ERROR_CHARS = 160


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


def error_kind(message: str) -> str:
    """The kind of a fallback's error, its first field: `connection error`, `timeout
    after 60 s`, `http 503`, `AnswerFormatError`, `bad response (not a chat completion)`."""
    return message.split(": ", 1)[0]


def fallback_stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Turns, fallbacks, their share and the most common error (an example message of
    the most common kind; "" without fallbacks) over trajectory rows. Rows with sample > 0
    repeat their dialogue's turns (think: one row per turn) and are skipped."""
    turns = fallbacks = 0
    errors: Counter[str] = Counter()
    examples: dict[str, str] = {}
    for row in rows:
        if row["sample"] != 0:
            continue
        turns += len(row["parse_error"])
        for failed, reason in zip(row["parse_error"], row["reason"], strict=True):
            if failed:
                fallbacks += 1
                message = reason.split(_AFTER, 1)[-1]
                kind = error_kind(message)
                errors[kind] += 1
                examples.setdefault(kind, message[:_MAX_ERROR_CHARS])
    top = errors.most_common(1)
    return {
        "simulator_turns": turns,
        "simulator_fallbacks": fallbacks,
        RATE_KEY: fallbacks / turns if turns else 0.0,
        "simulator_top_error": examples[top[0][0]] if top else "",
        "simulator_top_error_count": top[0][1] if top else 0,
    }


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
