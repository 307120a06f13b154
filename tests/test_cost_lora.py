"""The cost model's LoRA policies (rlver/cost.py with model.lora; rlver/data/cost/lora.yaml):
an adapter's size from the model's shape, its state, exports, training and decoding by
hand, and `rlver budget`'s LoRA layouts against the budget of the LoRA config itself."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rlver import budget, config, cost
from rlver.config_checks import LORA_TARGETS
from rlver.errors import RlverInputError

from .test_budget import LAYOUT, _workload

QWEN7B = {"hidden": 3584, "q_dim": 3584, "kv_dim": 512, "intermediate": 18944, "layers": 28}


def _items(e: cost.Estimate) -> dict[tuple[str, str], float]:
    return {(i.stage, i.label.split(" (")[0]): i.seconds for i in e.per_iteration()}


def test_adapter_parameters_from_the_shape() -> None:
    """Rank x (in + out) of each projection a layer: Qwen2.5-7B's 90,112 a layer at all
    seven targets, 28 layers; fewer targets, fewer parameters."""
    assert cost.adapter_params(64, LORA_TARGETS, QWEN7B) == 64 * 90112 * 28
    assert cost.adapter_params(8, ["q_proj", "v_proj"], QWEN7B) == 8 * 28 * (
        3584 + 3584 + 3584 + 512)
    known = cost.read_data("models.yaml")["qwen2.5-7b-instruct"]["shape"]
    assert known == QWEN7B


def test_adapter_parameters_equal_peft_s(base_model: Path) -> None:
    """The embedded model's shape (its config.json, and models.yaml's copy) sizes the
    adapter PEFT makes on it (on the meta device: no weights read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from rlver import lora

    cfg = config.compose("smoke", ["cluster=slurm", f"model.source={base_model}",
                                   "model/lora=r64", "model.lora.rank=8"])
    shape = budget.model_shape(cfg)
    assert shape == cost.read_data("models.yaml")["smollm2-135m-instruct"]["shape"]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base_model))
        peft_model = lora.new_adapter(model, cfg.model.lora)
    made = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert budget.adapter_params(cfg, shape) == made == 8 * 10176 * 30


def test_an_adapter_without_a_shape_is_refused() -> None:
    cfg = OmegaConf.create({"model": {"name": "mystery-9b", "source": "",
                                      "lora": {"rank": 8, "target_modules": ["q_proj"]}}})
    assert budget.model_shape(cfg) is None
    with pytest.raises(RlverInputError, match="model.lora.*Fix:"):
        budget.adapter_params(cfg, None)


def test_a_lora_iteration_per_stage_by_hand() -> None:
    """The adapter's state (14 bytes a trained parameter in bf16) and export (2), the
    base read beside the adapter, training at lora.yaml's factor, decoding slower by its
    extra seconds a token."""
    inp = cost.load_inputs()
    a = 1e7
    full, lora = _workload(), _workload(adapter_params=a)
    fs = inp["shared_fs_bytes_per_s"]
    f, lo = _items(cost.estimate(full, LAYOUT, inp)), _items(cost.estimate(lora, LAYOUT, inp))
    assert lo["update", "state load"] == pytest.approx(14 * a / fs)
    assert lo["update", "state save"] == pytest.approx(14 * a / fs)
    assert lo["update", "adapter export"] == pytest.approx(2 * a / fs)
    assert lo["update", "policy load"] == pytest.approx((2e9 + 2 * a) / fs)
    assert lo["rollout", "base and adapter read"] == pytest.approx((2e9 + 2 * a) / fs)
    assert lo["update", "train"] == pytest.approx(inp["lora_train_time_factor"]
                                                  * f["update", "train"])
    assert lo["rollout", "generate"] - f["rollout", "generate"] == pytest.approx(
        2 * 100 * inp["lora_decode_extra_s_per_token"])


def test_ppo_with_a_lora_or_a_full_critic() -> None:
    """PPO's LoRA critic is a second adapter on a second frozen base; a full critic
    (model.lora.critic: full) trains, saves and exports every weight."""
    inp = cost.load_inputs()
    a, fs = 1e7, inp["shared_fs_bytes_per_s"]
    lora_critic = _items(cost.estimate(_workload(models=2, adapter_params=a), LAYOUT, inp))
    full_critic = _items(cost.estimate(_workload(models=2, adapter_params=a, full_critic=True),
                                       LAYOUT, inp))
    assert lora_critic["update", "state save"] == pytest.approx(2 * 14 * a / fs)
    assert full_critic["update", "state save"] == pytest.approx(14 * (a + 1e9) / fs)
    assert lora_critic["update", "adapter export"] == pytest.approx(2 * 2 * a / fs)
    assert full_critic["update", "adapter export"] == pytest.approx(2 * (a + 1e9) / fs)
    assert lora_critic["update", "policy load"] == pytest.approx(2 * (2e9 + 2 * a) / fs)
    assert full_critic["update", "policy load"] == pytest.approx((2 * 2e9 + 2 * a) / fs)
    factor = inp["lora_train_time_factor"]
    one = _items(cost.estimate(_workload(), LAYOUT, inp))["update", "train"]
    assert lora_critic["update", "train"] == pytest.approx(2 * factor * one)
    assert full_critic["update", "train"] == pytest.approx((1 + factor) * one)


def test_lora_memory_and_disk() -> None:
    """A rank holds the adapter's weights, gradients and Adam state under ZeRO and the
    frozen base whole; the disk keeps adapters as policies and the adapter's state."""
    inp = cost.load_inputs()
    a = 1e7
    w = _workload(params=7.62e9, models=2, adapter_params=a)
    assert cost.update_memory_per_gpu(w, inp, 8) == pytest.approx(
        2 * (a * (2 + 2 / 8 + 12 / 8) + 2 * 7.62e9))
    d = {name: (peak, end) for name, peak, end in cost.disk(_workload(adapter_params=a),
                                                           inp).rows}
    assert d["base model"] == (2e9, 2e9)
    assert d["kept policies"] == pytest.approx((4 * 2 * a, 2 * 2 * a))
    assert d["optimizer state"] == pytest.approx((2 * 14 * a, 0))


def test_resident_lora_hands_the_adapter_over_and_vllm_may_sleep() -> None:
    inp = cost.load_inputs()
    w = _workload(iterations=12, adapter_params=1e7)
    block = cost.Layout("k4", 1, 1, 1, 2, block=4)
    awake = {i.label: i.seconds for i in cost.estimate(w, block, inp).iteration}
    asleep = {i.label: i.seconds for i in cost.estimate(
        w, replace(block, engine_sleeps=True), inp).iteration}
    assert awake["adapter to the engine"] == inp["lora_adapter_sync_s"]
    assert "weight sync to the engine" not in awake and "vLLM sleep and wake" not in awake
    assert asleep["vLLM sleep and wake"] == inp["vllm_sleep_wake_s"]


def _budget(experiment: str, *overrides: str) -> budget.Budget:
    return budget.make_budget(config.compose(experiment, list(overrides),
                                             require_user_keys=False))


@pytest.mark.parametrize("experiment", ["paper_grpo_think_vanilla", "paper_ppo_think_vanilla"])
def test_a_full_weight_budget_offers_lora_as_the_lora_config_prices_it(experiment: str) -> None:
    """The LoRA layouts of a full-weight paper config are what `rlver budget` gives for
    the config with their overrides; its summary keeps to the same run."""
    full = _budget(experiment)
    offered = {e.layout.name: e for e in full.estimates if e.workload.lora}
    assert list(offered) == ["LoRA r64, per stage, update 1x8",
                             next(n for n in offered if n.startswith("LoRA r64, resident "
                                                                     "blocks") and "1x8" in n),
                             next(n for n in offered if n.endswith("1 GPU, vLLM sleeps"))]
    per_stage = offered["LoRA r64, per stage, update 1x8"]
    assert per_stage.layout.how == "model/lora=r64 cluster.nodes=1"
    lora = _budget(experiment, *per_stage.layout.how.split())
    assert lora.workload.adapter_params == 64 * 90112 * 28
    assert lora.own.gpu_h_run() == pytest.approx(per_stage.gpu_h_run())
    assert lora.own.wall_s_run() == pytest.approx(per_stage.wall_s_run())
    for name, e in offered.items():
        mine = next(x for x in lora.estimates if x.layout.block == e.layout.block
                    and x.layout.update_gpus == e.layout.update_gpus
                    and x.layout.engine_sleeps == e.layout.engine_sleeps
                    and not x.layout.local_state)
        assert mine.gpu_h_run() == pytest.approx(e.gpu_h_run()), name
    assert per_stage.gpu_h_run() < min(e.gpu_h_run() for e in full.estimates
                                       if not e.workload.lora)
    assert "LoRA" not in budget.summary_line(full)
    sleeps = offered[next(n for n in offered if n.endswith("vLLM sleeps"))]
    assert sleeps.layout.how.startswith("not implemented")
    assert sleeps.gpus == {"block": 1}


def test_a_lora_budget_says_so() -> None:
    b = _budget("paper_ppo_think_vanilla", "model/lora=r64", "model.lora.rank=16")
    text = budget.to_text(b)
    assert "LoRA rank 16 (4.04e+07 adapter parameters a model)" in text
    assert "adapter export" in budget.items_text(b.own)
    assert b.disk.peak < _budget("paper_ppo_think_vanilla").disk.peak / 10


def test_a_config_json_without_the_shape_falls_back_to_the_known_model(stub_model: Path) -> None:
    """A model folder whose config.json lacks the sizes (the dry runs' stub) takes the
    shape models.yaml knows for model.name, as its parameters do; the LoRA config's
    budget, which snakemake prints, is made."""
    cfg = config.compose("paper_ppo_think_vanilla", [f"model.source={stub_model}",
                                                     "model/lora=r64"],
                         require_user_keys=False)
    assert budget.model_shape(cfg) == QWEN7B
    assert "not available" not in (budget.budget_note(cfg) or "")
