"""Update: one GRPO policy step over an iteration's rollouts, on DeepSpeed, via submitit.

`run_update` (the stage) checks its inputs, submits `UpdateJob` through submitit — the
local executor on one machine, Slurm on a cluster (`cluster.launcher`) — waits for it
and surfaces the job id and log on failure. The job sets up torch.distributed from
submitit's environment, trains with DeepSpeed and exports the new policy in HF format.

The loss is the token mean of the clipped surrogate over all assistant tokens of the
iteration (every rank, every micro-batch): each micro-batch's token sum is scaled by
world_size * grad_accum / total_tokens, undoing DeepSpeed's averaging over ranks and
accumulation steps, so the gradient is the same however the batch is split.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from rlver.errors import RlverInputError


@dataclass(frozen=True)
class UpdateSpec:
    """Everything an update job needs; plain data so submitit can pickle it."""

    config_path: str
    iteration: int
    policy_dir: str
    rollout_paths: tuple[str, ...]
    out_policy_dir: str
    update_dir: str


def check_inputs(spec: UpdateSpec) -> None:
    """Refuse rollouts from another config or another policy before any job starts."""
    from rlver import config as config_mod
    from rlver.io import weights_sha256
    from rlver.schema import read_metadata

    cfg = config_mod.load(spec.config_path)
    want_cfg = config_mod.config_hash(cfg)
    want_policy = weights_sha256(spec.policy_dir)
    for path in spec.rollout_paths:
        meta = read_metadata(path)
        if meta["config_hash"] != want_cfg:
            raise RlverInputError(
                f"{path}: written under config {meta['config_hash']}, this run's config is "
                f"{want_cfg} (field config_hash). Fix: delete the file and rerun its rollout."
            )
        if meta["policy_sha256"] != want_policy:
            raise RlverInputError(
                f"{path}: sampled by policy {meta['policy_sha256'][:12]}, not by "
                f"{spec.policy_dir} ({want_policy[:12]}) (field policy_sha256). "
                "Fix: delete the file and rerun its rollout."
            )


def run_update(spec: UpdateSpec) -> dict[str, Any]:
    """Stage `update`: submit the job, wait, return rank 0's metrics."""
    import submitit

    from rlver import config as config_mod

    check_inputs(spec)
    cfg = config_mod.load(spec.config_path)
    cl = cfg.cluster
    folder = Path(spec.update_dir) / "submitit"
    executor = submitit.AutoExecutor(folder=folder, cluster=cl.launcher)
    params: dict[str, Any] = {
        "timeout_min": cl.timeout_min,
        "nodes": cl.nodes,
        "tasks_per_node": cl.tasks_per_node,
        "name": f"rlver-update-{cfg.run}-{spec.iteration:04d}",
    }
    if cl.launcher == "slurm":
        params |= {
            "cpus_per_task": cl.cpus_per_task,
            "gpus_per_node": cl.gpus_per_node,
            "slurm_partition": cl.partition or None,
            "slurm_account": cl.account or None,
            "slurm_qos": cl.qos or None,
            "slurm_additional_parameters": dict(cl.slurm_additional_parameters),
        }
        if cl.mem_gb:
            params["mem_gb"] = cl.mem_gb
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    job = executor.submit(UpdateJob(), spec)
    print(f"update iter {spec.iteration}: submitted job {job.job_id} ({cl.launcher}); "
          f"logs: {job.paths.stdout.parent}", file=sys.stderr, flush=True)
    try:
        results = job.results()
    except Exception as exc:
        raise RuntimeError(
            f"update job {job.job_id} failed; its log: {job.paths.stderr}\n{exc}"
        ) from exc
    return results[0]


class UpdateJob:
    """The submitit job body, run once per rank."""

    def __call__(self, spec: UpdateSpec) -> Optional[dict[str, Any]]:
        import submitit

        from rlver import config as config_mod

        cfg = config_mod.load(spec.config_path)
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        return train(spec, cfg)


def _lr_at(step: int, total_steps: int, lr: float, warmup_ratio: float) -> float:
    warmup = max(1, math.ceil(warmup_ratio * total_steps))
    return lr * min(1.0, (step + 1) / warmup) if warmup_ratio > 0 else lr


def deepspeed_config(alg: Any, micro_batch: int, grad_accum: int, world: int) -> dict[str, Any]:
    """The DeepSpeed config for `algorithm.*`; the learning rate is set per step by us."""
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch * grad_accum * world,
        "gradient_clipping": alg.grad_clip,
        "zero_optimization": {"stage": alg.zero_stage},
        "bf16": {"enabled": alg.precision == "bf16"},
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": alg.lr, "weight_decay": alg.weight_decay, "betas": [0.9, 0.999],
                       "eps": 1e-8, "torch_adam": True},
        },
        "steps_per_print": 10**9,
    }


def _micro_batches(rows: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def _collate(rows: list[dict[str, Any]], pad_id: int, device: Any) -> dict[str, Any]:
    import torch

    width = max(len(r["input_ids"]) for r in rows)
    out = {k: torch.zeros((len(rows), width), dtype=dt) for k, dt in
           [("input_ids", torch.long), ("attention_mask", torch.long), ("loss_mask", torch.long),
            ("weight", torch.float32), ("old_logp", torch.float32), ("adv", torch.float32)]}
    out["input_ids"].fill_(pad_id)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        out["input_ids"][i, :n] = torch.tensor(r["input_ids"])
        out["attention_mask"][i, :n] = 1
        out["loss_mask"][i, :n] = torch.tensor(r["loss_mask"])
        out["weight"][i, :n] = r["weight"]
        out["old_logp"][i, :n] = torch.tensor(r["logprobs"])
        out["adv"][i, :n] = r["advantage"]
    return {k: v.to(device) for k, v in out.items()}


def train(spec: UpdateSpec, cfg: Any) -> Optional[dict[str, Any]]:
    """One GRPO step on this rank; rank 0 exports the policy and returns the metrics."""
    import deepspeed
    import torch

    from rlver import algorithms
    from rlver.config import derive_seed
    from rlver.io import atomic_path, write_json
    from rlver.models import load_policy
    from rlver.schema import read_rows

    t0 = time.perf_counter()
    alg = cfg.algorithm
    torch.manual_seed(derive_seed(cfg.seed, "update", spec.iteration))
    torch.set_num_threads(max(1, cfg.cluster.cpus_per_task))
    deepspeed.init_distributed(dist_backend="gloo" if not torch.cuda.is_available() else "nccl")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
                          if torch.cuda.is_available() else "cpu")

    rows = read_rows(list(spec.rollout_paths))
    rewards = torch.tensor([r["reward"] for r in rows], dtype=torch.float32)
    adv = algorithms.group_advantages(rewards, [r["group_id"] for r in rows], alg.adv_eps)
    for r, a in zip(rows, adv.tolist(), strict=True):
        r["advantage"], r["weight"] = a, 1.0
    total_tokens = sum(sum(r["loss_mask"]) for r in rows)
    # Every rank runs the same number of micro-batches (DeepSpeed reduces gradients at
    # the accumulation boundary on all ranks); a rank short of rows gets a zero-weight one.
    # Sorted by length, micro-batches carry little padding; the sum is order-independent.
    mine = sorted(rows[rank::world], key=lambda r: len(r["input_ids"]))
    grad_accum = max(1, math.ceil(math.ceil(len(rows) / world) / alg.micro_batch_size))
    batches = _micro_batches(mine, alg.micro_batch_size)
    while len(batches) < grad_accum:
        batches.append([rows[0] | {"weight": 0.0}])

    model, tokenizer = load_policy(spec.policy_dir, "float32")
    model.train()
    engine, *_ = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=deepspeed_config(alg, alg.micro_batch_size, grad_accum, world),
    )
    lr = _lr_at(spec.iteration, cfg.iterations, alg.lr, alg.warmup_ratio)
    for group in engine.optimizer.param_groups:
        group["lr"] = lr
    scale = world * grad_accum / max(1, total_tokens)
    sums = torch.zeros(5, dtype=torch.float64)  # loss, clipped, kl, entropy, tokens
    grad_norm = float("nan")
    for batch_rows in batches:
        b = _collate(batch_rows, tokenizer.pad_token_id or 0, device)
        logits = engine(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        select = b["loss_mask"] > 0
        logp, entropy = algorithms.selected_token_terms(logits, b["input_ids"], select,
                                                        cfg.rollout.temperature)
        old_logp, adv, weight = b["old_logp"][select], b["adv"][select], b["weight"][select]
        loss_tok, clipped = algorithms.clipped_surrogate(logp, old_logp, adv, alg.clip_ratio)
        loss_tok = loss_tok - alg.entropy_coef * entropy
        engine.backward(algorithms.masked_sum(loss_tok, weight) * scale)
        if engine.is_gradient_accumulation_boundary():
            grad_norm = _grad_norm(engine.module)
        engine.step()
        with torch.no_grad():
            log_ratio = logp - old_logp
            sums += torch.tensor([
                algorithms.masked_sum(loss_tok, weight).item(),
                algorithms.masked_sum(clipped, weight).item(),
                algorithms.masked_sum(torch.exp(log_ratio) - 1 - log_ratio, weight).item(),
                algorithms.masked_sum(entropy, weight).item(),
                weight.sum().item(),
            ], dtype=torch.float64)
    torch.distributed.all_reduce(sums)
    # ZeRO optimizers report the norm of their partitioned gradients; stage 0 does not.
    grad_norm = engine.get_global_grad_norm() or grad_norm
    state = _full_state_dict(engine, alg.zero_stage)
    if rank != 0:
        torch.distributed.barrier()
        return None
    with atomic_path(spec.out_policy_dir) as tmp:
        engine.module.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    seconds = time.perf_counter() - t0
    tokens = sums[4].item()
    metrics = {
        "iteration": spec.iteration,
        "algorithm": alg.name,
        "loss": sums[0].item() / max(1.0, tokens),
        "clip_fraction": sums[1].item() / max(1.0, tokens),
        "approx_kl": sums[2].item() / max(1.0, tokens),
        "entropy": sums[3].item() / max(1.0, tokens),
        "reward_mean": rewards.mean().item(),
        "reward_std": rewards.std(unbiased=False).item(),
        "num_samples": len(rows),
        "num_tokens": int(total_tokens),
        "grad_norm": float(grad_norm),
        "lr": lr,
        "world_size": world,
        "seconds": seconds,
        "tokens_per_s": total_tokens / seconds,
    }
    _tensorboard(Path(spec.update_dir) / "tensorboard", metrics, spec.iteration)
    write_json(Path(spec.update_dir) / "metrics.json", metrics)
    torch.distributed.barrier()
    print(f"update iter {spec.iteration}: loss {metrics['loss']:.4f}, reward "
          f"{metrics['reward_mean']:.3f}, grad norm {metrics['grad_norm']:.3f}, "
          f"{seconds:.1f} s", file=sys.stderr, flush=True)
    return metrics


def _grad_norm(module: Any) -> float:
    """L2 norm of the full gradients (before clipping)."""
    import torch

    norms = [p.grad.detach().norm() for p in module.parameters() if p.grad is not None]
    return torch.stack(norms).norm().item() if norms else 0.0


def _full_state_dict(engine: Any, zero_stage: int) -> Optional[dict[str, Any]]:
    """The full weights on rank 0; under ZeRO-3 every rank must join the gather."""
    if zero_stage == 3:
        return engine._zero3_consolidated_16bit_state_dict()
    return engine.module.state_dict()


def _tensorboard(folder: Path, metrics: dict[str, Any], step: int) -> None:
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(folder)) as writer:
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and key != "iteration":
                writer.add_scalar(f"update/{key}", value, step)
