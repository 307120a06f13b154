"""The vLLM worker extension of `VLLMEngine`: loads new policy weights into the running
model, in the worker's own process (vLLM mixes this class into its worker class; the
engine calls it with `collective_rpc`)."""

from __future__ import annotations

#: What `VLLMEngine` passes as vLLM's `worker_extension_cls`.
QUALNAME = "rlver.engines.vllm_worker.PolicyWeights"


class PolicyWeights:
    """Mixed into vLLM's worker: `self` is the worker."""

    def load_policy_weights(self, path: str, aliases: dict[str, str]) -> int:
        """Load the tensors of the safetensors file at `path` (HF names) into the model
        in place, with vLLM's own in-place reload (the model's `load_weights`: HF names to
        vLLM's fused layers, each layer reprocessed for its kernels); returns how many
        tensors it loaded.

        `aliases`: {tied name: the name whose tensor it shares}, loaded too: on CPU a
        tied lm_head keeps its own packed copy of the embedding for its matmul, which
        only a load into the lm_head itself renews."""
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            names = [(n, n) for n in f.keys()] + list(aliases.items())
            # Tensors come one at a time off the memory-mapped file: no second full copy.
            self.reload_weights(  # type: ignore[attr-defined]
                weights_iterator=((n, f.get_tensor(source)) for n, source in names))
        return len(names)
