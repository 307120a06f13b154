"""The PPO critic: a value head (one Linear) on the last hidden state of a copy of the base
model, saved and loaded as a directory of its own (config.json + model.safetensors; with
model.lora's LoRA critic, its adapter and head and the base's record, base.json).

Values are aligned with the tokens like log-probs are: the value at token t is read from
the hidden state at t-1, i.e. V(s_t) of the context the policy saw before sampling t.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import torch

from rlver.errors import RlverInputError
from rlver.train.modules import ValueModel

__all__ = ["ValueModel", "critic_from_policy", "load_critic", "save_critic"]


def critic_from_policy(policy_dir: str | os.PathLike[str], lora: Any = None,
                       base_dir: Optional[str | os.PathLike[str]] = None) -> ValueModel:
    """A fresh critic: the policy's backbone (its LM head dropped) with a zero value head.
    With `lora` (model.lora) it is built on the base at `base_dir`: with an adapter of its
    own (`lora.critic: lora`, rlver.train.adapters) or whole (`full`)."""
    from transformers import AutoModelForCausalLM

    if lora is not None:
        assert base_dir is not None
        if lora.critic == "lora":
            from rlver.train.adapters import lora_critic

            return lora_critic(base_dir, lora)
        policy_dir = base_dir
    lm = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
    return ValueModel(lm.base_model)


def load_critic(path: str | os.PathLike[str], lora: Any = None) -> ValueModel:
    """A critic saved by `save_critic` (a LoRA critic, with base.json, needs `lora`)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel

    from rlver.io import BASE_RECORD

    path = Path(path)
    if not (path / "model.safetensors").is_file():
        raise RlverInputError(f"{path}: no critic here (model.safetensors missing).")
    if (path / BASE_RECORD).is_file():
        from rlver.train.adapters import load_lora_critic

        return load_lora_critic(path, lora)
    backbone = AutoModel.from_config(AutoConfig.from_pretrained(path), dtype=torch.float32)
    model = ValueModel(backbone)
    model.load_state_dict(load_file(path / "model.safetensors"))
    return model


def save_critic(state: dict[str, torch.Tensor], module: ValueModel, out_dir: Path,
                final: Optional[Path] = None, dtype: Optional[torch.dtype] = None) -> None:
    """Write a critic's state dict (as gathered from its engine: a LoRA critic's is its
    adapter and head, with base.json naming its base) to `out_dir`, which will be renamed
    to `final` (default: it is final)."""
    from safetensors.torch import save_file

    from rlver.train.adapters import critic_base

    out_dir.mkdir(parents=True, exist_ok=True)
    module.config.save_pretrained(out_dir)
    if (base := critic_base(module)) is not None:
        from rlver.lora import write_base_record

        write_base_record(out_dir, base, final or out_dir)
    tensors = {k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in state.items()}
    save_file(tensors, out_dir / "model.safetensors")
