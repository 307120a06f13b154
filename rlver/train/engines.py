"""The models as DeepSpeed trains them: the policy wrapper and the engine set-up."""

from __future__ import annotations

from typing import Any

import torch

from rlver.train.modules import PolicyLM

__all__ = ["PolicyLM", "deepspeed_config", "make_engine", "policy_module",
           "recompute_activations", "reference_model"]


def policy_module(policy_dir: str, lora: Any) -> tuple[torch.nn.Module, Any]:
    """(module to train, tokenizer) of the policy at `policy_dir`: the whole model, or with
    `lora` (model.lora) its adapter on the frozen base (rlver.train.adapters)."""
    from rlver.models import load_policy

    if lora is not None:
        from rlver.train.adapters import policy

        return policy(policy_dir, lora)
    model, tokenizer = load_policy(policy_dir, "float32")
    return PolicyLM(model), tokenizer


def reference_model(reference_dir: Any, lora: Any, actor: Any, device: Any) -> Any:
    """The KL reference: the base policy at `reference_dir`, loaded beside the actor; with
    `lora`, the actor itself with its adapter disabled (no second copy)."""
    from rlver.models import load_policy

    if lora is not None:
        from rlver.train.adapters import BaseReference

        return BaseReference(actor)
    return PolicyLM(load_policy(reference_dir)[0]).to(device)


def deepspeed_config(alg: Any, lr: float, grad_accum: int, world: int) -> dict[str, Any]:
    """The DeepSpeed config for `algorithm.*`. Micro-batches vary in size (token budget),
    so DeepSpeed sees batches of 1 and we mark the accumulation boundary ourselves; the
    learning rate is set per step by us (warm-up over the whole run)."""
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": grad_accum * world,
        "gradient_clipping": alg.grad_clip,
        "zero_optimization": {"stage": alg.zero_stage},
        "bf16": {"enabled": alg.precision == "bf16"},
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": lr, "weight_decay": alg.weight_decay, "betas": [0.9, 0.999],
                       "eps": 1e-8, "torch_adam": True},
        },
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }


def make_engine(module: torch.nn.Module, alg: Any, lr: float, grad_accum: int,
                world: int) -> Any:
    import deepspeed

    if alg.gradient_checkpointing:
        recompute_activations(module)
    module.train()
    engine, *_ = deepspeed.initialize(
        model=module, model_parameters=[p for p in module.parameters() if p.requires_grad],
        config=deepspeed_config(alg, lr, grad_accum, world))
    return engine


def recompute_activations(module: torch.nn.Module) -> None:
    """Gradient checkpointing on the transformers models inside `module` (the policy's LM,
    the critic's backbone): each decoder layer keeps only its input and recomputes the
    rest in the backward pass. Non-reentrant: it needs no input that requires grad."""
    from transformers import PreTrainedModel

    for m in module.modules():
        if isinstance(m, PreTrainedModel) and m.supports_gradient_checkpointing:
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
