"""LoRA in the update (`model.lora`): the policy and PPO's critic as DeepSpeed trains
them, their state, the KL reference and the adapter's export.

The policy is the base with a PEFT adapter (rlver.lora) wrapped in `PolicyLM`; only the
adapter's parameters require gradients, so DeepSpeed's optimizer, its gradients and its
checkpoints hold those alone (`TrainedStateOnly`). The reference log-probs of the KL term
come from the same module with the adapter disabled (PEFT's `disable_adapter()`): the
base, without a second copy of it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import torch

from rlver.train.modules import PolicyLM, ValueModel


class TrainedStateOnly(torch.nn.Module):
    """A module whose state dict is its trained parameters only: the frozen base is not
    state, it is the base model's (a tied alias of a frozen tensor, as SmolLM2's
    lm_head, is left out too). So DeepSpeed's checkpoints (`save_checkpoint` reads the
    state dict) and the ranks' weight hashes cover what training changes; loading one
    back checks that every trained parameter is in it."""

    def trained_names(self, prefix: str = "") -> set[str]:
        return {prefix + n for n, p in self.named_parameters() if p.requires_grad}

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        state = super().state_dict(*args, **kwargs)
        trained = self.trained_names(kwargs.get("prefix", ""))
        for key in [k for k in state if k not in trained]:
            del state[key]
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True,
                        assign: bool = False) -> Any:
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = sorted(set(result.missing_keys) & self.trained_names())
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"{type(self).__name__}: the state lacks trained parameters "
                               f"{missing[:5]} or has unknown ones "
                               f"{sorted(result.unexpected_keys)[:5]}")
        return result


class AdapterPolicy(TrainedStateOnly, PolicyLM):
    """`PolicyLM` over a PEFT model's base (its LoRA layers in place); the PEFT model is
    kept beside, outside the module tree (the same parameters, registered once)."""

    def __init__(self, peft_model: Any) -> None:
        super().__init__(peft_model.get_base_model())
        self._peft = (peft_model,)

    @property
    def peft(self) -> Any:
        return self._peft[0]


def policy(policy_dir: str | os.PathLike[str], lora: Any) -> tuple[AdapterPolicy, Any]:
    """(module, tokenizer) to train: the adapter at `policy_dir` (iteration i > 0), or a
    new one on the base (iteration 0's policy is the base)."""
    from rlver import lora as L
    from rlver.models import load_adapter, load_policy

    if L.is_adapter(policy_dir):
        peft_model, tokenizer = load_adapter(policy_dir, "float32", trainable=True)
    else:
        model, tokenizer = load_policy(policy_dir, "float32")
        peft_model = L.new_adapter(model, lora)
    return AdapterPolicy(peft_model), tokenizer


class BaseReference:
    """The KL reference of a LoRA policy: the actor's own module with its adapter
    disabled, i.e. the base. Called as the reference model is (`rollout_terms`)."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        module = self.actor.module
        with module.peft.disable_adapter():
            out: torch.Tensor = module(*args)
        return out


def save_policy(actor: Any, out_dir: str | os.PathLike[str], base: str | os.PathLike[str],
                iteration: int) -> str:
    """Rank 0: write the actor's adapter as iteration i+1's policy (rlver.lora's folder);
    its sha256. ZeRO 0-2 keep the parameters whole on every rank."""
    from rlver import lora as L

    return L.save_adapter(actor.module.peft, out_dir, base, iteration)


def frozen(engine: Any) -> bool:
    """Whether the engine's module has frozen parameters (a LoRA model's base): its
    checkpoints leave them out (`save_checkpoint(exclude_frozen_parameters=...)`; ZeRO-2
    would save their fragments otherwise)."""
    return any(not p.requires_grad for p in engine.module.parameters())


# --- PPO's critic with model.lora.critic = lora


class AdapterValueModel(TrainedStateOnly, ValueModel):
    """The critic with `model.lora.critic: lora`: the base's backbone with an adapter of
    its own (the policy's rank and targets) and a trained value head; the rest frozen.
    `base_dir`: the base it was built on (saved beside it as base.json)."""

    def __init__(self, backbone: Any, base_dir: str | os.PathLike[str]) -> None:
        super().__init__(backbone)
        self.base_dir = str(base_dir)


def lora_critic(base_dir: str | os.PathLike[str], lora: Any) -> AdapterValueModel:
    """A fresh LoRA critic on the base at `base_dir`: a new adapter (seeded by the
    caller's torch generator; B = 0) and a zero value head."""
    from peft import inject_adapter_in_model
    from transformers import AutoModelForCausalLM

    from rlver import lora as L

    lm = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    backbone = inject_adapter_in_model(L.peft_config(lora), lm.base_model)
    for name, p in backbone.named_parameters():
        p.requires_grad = "lora_" in name
    return AdapterValueModel(backbone, base_dir)


def load_lora_critic(path: Path, lora: Any) -> AdapterValueModel:
    """A LoRA critic saved by `rlver.train.critic.save_critic`: its base (base.json) with
    the saved adapter and head."""
    from safetensors.torch import load_file

    from rlver import lora as L

    model = lora_critic(L.base_of(path), lora)
    model.load_state_dict(load_file(path / "model.safetensors"))
    return model


def critic_base(module: Any) -> Optional[str]:
    """The base a critic module was built on if it is a LoRA critic, else None."""
    return module.base_dir if isinstance(module, AdapterValueModel) else None
