"""The update on one rank, top to bottom: set-up, rollout terms, advantages, epochs x
mini-batches of optimizer steps (losses, backward, step, metrics), export.

Losses are token means over all assistant tokens of a mini-batch (every rank, every
micro-batch): each micro-batch's token sum is scaled by world_size / mini-batch tokens,
undoing DeepSpeed's average over ranks, so the gradient is the same however the rows are
split over ranks and micro-batches.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, Optional

import torch

from rlver import algorithms as A
from rlver import config as config_mod
from rlver import faults, scalars
from rlver.errors import RlverInputError
from rlver.io import write_json
from rlver.train import metrics as M
from rlver.train import mismatch
from rlver.train import state as S
from rlver.train.advantages import advantages
from rlver.train.batch import Terms, action_positions, collate, rollout_terms
from rlver.train.engines import make_engine, policy_module, reference_model
from rlver.train.losses import STAT_KEYS, actor_loss, critic_loss
from rlver.train.plan import Step, make_plan
from rlver.train.preemption import Preemption
from rlver.train.shared import check_shared_folder
from rlver.train.spec import UpdateSpec

#: What an update writes besides its metrics (`finish`).
Export = Literal["all", "policy", "none"]


@dataclass
class Batch:
    """One update's rollout rows and the plan of its optimizer steps on this rank."""

    rows: list[dict[str, Any]]
    lengths: list[int]
    plan: list[Step]
    zero_spread: dict[str, bool]
    #: Rows of dialogues that ended with outcome `error`, left out (`read_batch`).
    excluded: int = 0

    @property
    def grad_accum(self) -> int:
        return max(len(s.micro) for s in self.plan)


@dataclass
class Engines:
    """The DeepSpeed engines of one rank: the policy (`actor`) and PPO's critic."""

    actor: Any
    critic: Any
    tokenizer: Any
    pad_id: int


def train(spec: UpdateSpec, cfg: Any, resume: bool = False,
          preemption: Optional[Preemption] = None) -> dict[str, Any]:
    """The update on this rank. Every rank returns its weights' hash; rank 0's result is
    the metrics (also written to metrics.json)."""
    t0 = time.perf_counter()
    rank, world, device = start(cfg, Path(spec.update_dir))
    resume_dir = Path(spec.update_dir) / "resume"
    if rank == 0 and not resume:
        shutil.rmtree(resume_dir, ignore_errors=True)  # a leftover of a killed job
    batch = read_batch(spec, cfg, rank, world)
    engines = open_engines(spec, cfg, batch.grad_accum, world, rank)

    # --- where to start: a preempted job's checkpoint, or update i-1's optimizer state
    progress = S.load_resume(resume_dir, engines.actor, engines.critic, world) if resume else None
    if progress is not None:
        terms, carried = S.resume_terms(resume_dir), progress.carried
        S.log(rank, f"update iter {spec.iteration}: resumed after step {progress.next_step}"
                    f"/{len(batch.plan)} from {resume_dir}")
    else:
        progress = S.Progress()
        carried = S.load_carried(spec, engines.actor, engines.critic, rank)
        reference = None
        if cfg.algorithm.kl_coef > 0:
            reference = reference_model(spec.reference_dir, cfg.model.lora, engines.actor,
                                        device)
        terms = batch_terms(batch, cfg, engines, reference, rank, world, device)
    t_train = optimize(spec, cfg, engines, batch, terms, progress, carried, rank, world,
                       device, preemption, t0)
    return finish(spec, cfg, engines, batch, terms, progress, rank, world, t0, t_train,
                  export="all")


def start(cfg: Any, folder: Path, timeout: Optional[timedelta] = None
          ) -> tuple[int, int, torch.device]:
    """Seeds, threads, torch.distributed and the device of this rank: (rank, world,
    device), once every rank sees the files of the job's `folder` (`check_shared_folder`).
    `timeout`: how long a collective waits for the other ranks (DeepSpeed's default,
    30 min, when None)."""
    import deepspeed

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(max(1, cfg.cluster.cpus_per_task))
    flush_subnormals()
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo",
                               **({} if timeout is None else {"timeout": timeout}))
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    device = torch.device("cpu")
    if torch.cuda.is_available():
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
        torch.cuda.set_device(device)
    check_shared_folder(folder, rank, world)
    return rank, world, device


def read_batch(spec: UpdateSpec, cfg: Any, rank: int, world: int) -> Batch:
    """The update's rollouts and the plan of its optimizer steps (epochs x mini-batches).

    Rows of dialogues that ended with outcome `error` are left out: a full context or a
    simulator that gave no usable answer (simulator.on_parse_error=error) ended them, not
    the protocol, so their final emotion is not the paper's reward (as DAPO leaves
    overlong samples out of the loss). Their count is `excluded_error_rows`."""
    from rlver.schema import read_rows

    read = read_rows(list(spec.rollout_paths))
    rows = [r for r in read if r["outcome"] != "error"]
    if not rows:
        raise RlverInputError(
            f"update iter {spec.iteration}: all {len(read)} rollout rows of "
            f"{', '.join(spec.rollout_paths)} ended with outcome error (field outcome): "
            "nothing to train on. Fix: read the rollout logs for why (a full context, a "
            "failing simulator), mend that and rerun the rollouts.")
    lengths = [len(r["input_ids"]) for r in rows]
    actions = [len(action_positions(r)) for r in rows]
    plan = make_plan(lengths, actions, cfg.algorithm, cfg.seed, spec.iteration, rank, world)
    return Batch(rows, lengths, plan, M.zero_spread_groups(rows), len(read) - len(rows))


def open_engines(spec: UpdateSpec, cfg: Any, grad_accum: int, world: int,
                 rank: int) -> Engines:
    """The policy at spec.policy_dir, and PPO's critic (carried from update i-1 if kept),
    as DeepSpeed engines."""
    from rlver.train.critic import critic_from_policy, load_critic

    alg, lora = cfg.algorithm, cfg.model.lora
    module, tokenizer = policy_module(spec.policy_dir, lora)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    actor = make_engine(module, alg, alg.lr, grad_accum, world)
    critic = None
    if alg.name == "ppo":
        carried_critic = spec.iteration > 0 and (
            spec.run.critic(spec.iteration - 1) / "model.safetensors").is_file()
        value_model = (load_critic(spec.run.critic(spec.iteration - 1), lora) if carried_critic
                       else critic_from_policy(spec.policy_dir, lora, spec.reference_dir))
        S.log(rank, f"update iter {spec.iteration}: critic " + (
            f"carried from {spec.run.critic(spec.iteration - 1)}" if carried_critic
            else "new: the policy's backbone with a zero value head" if lora is None
            else f"new: the base's backbone ({lora.critic}) with a zero value head"))
        critic = make_engine(value_model, alg, alg.critic_lr, grad_accum, world)
    return Engines(actor, critic, tokenizer, pad_id)


def batch_terms(batch: Batch, cfg: Any, engines: Engines, reference: Any, rank: int,
                world: int, device: torch.device) -> Terms:
    """The rollout terms (critic values, reference log-probs), the advantages, then the
    old log-probs of the ratio and, where they are needed before the first step, the
    trainer's own log-probs of the rows (rlver.train.mismatch)."""
    alg = cfg.algorithm
    fixed: Terms = {}
    if alg.name == "ppo" or alg.kl_coef > 0:
        fixed = rollout_terms(batch.rows, alg, engines.critic, reference,
                              cfg.rollout.temperature, rank, world, engines.pad_id, device)
    policy = None
    if mismatch.needs_pass(alg):
        t = time.perf_counter()
        first_epoch = [mb for step in batch.plan[:alg.mini_batches] for mb in step.micro]
        policy = mismatch.policy_logprobs(batch.rows, first_epoch, engines.actor,
                                          cfg.rollout.temperature, world, engines.pad_id,
                                          device)
        S.log(rank, f"update: the trainer's log-probs of the rollouts in "
                    f"{time.perf_counter() - t:.1f} s (one no-grad pass)")
    return mismatch.old_logprobs(advantages(batch.rows, fixed, alg), policy, alg)


def optimize(spec: UpdateSpec, cfg: Any, engines: Engines, batch: Batch, terms: Terms,
             progress: S.Progress, carried: bool, rank: int, world: int,
             device: torch.device, preemption: Optional[Preemption], t0: float) -> float:
    """The optimizer steps of the plan from progress.next_step on (recorded in
    `progress`). On the preemption signal, at the end of any step, the last one too
    (before the export, which takes longer than the checkpoint and cannot stop half-way):
    a checkpoint to update/resume and a requeue. Returns when the steps began
    (perf_counter)."""
    alg = cfg.algorithm
    actor, critic = engines.actor, engines.critic
    rows, lengths, plan = batch.rows, batch.lengths, batch.plan
    per_iter = len(plan)
    # The schedule of the plan the run was frozen with: an extended run keeps its warm-up.
    total_steps = config_mod.schedule_iterations(spec.config_path) * per_iter
    t_train = time.perf_counter()
    for k in range(progress.next_step, per_iter):
        step = plan[k]
        global_step = spec.iteration * per_iter + k
        lrs = {"lr": A.warmup_lr(global_step, total_steps, alg.lr, alg.warmup_ratio)}
        engines_now = {"actor": actor}
        if critic is not None:
            engines_now["critic"] = critic
            lrs["critic_lr"] = A.warmup_lr(global_step, total_steps, alg.critic_lr,
                                           alg.critic_warmup_ratio)
        for name, engine in engines_now.items():
            for group in engine.optimizer.param_groups:
                group["lr"] = lrs["lr" if name == "actor" else "critic_lr"]
        batches = (collate([rows[r] for r in mb.rows], [terms[r] for r in mb.rows], mb.weight,
                           engines.pad_id, device) for mb in step.micro)
        # without the no-grad pass the gap is measured on the first step's own forward
        logps: Optional[list[torch.Tensor]] = (
            [] if k == 0 and not mismatch.needs_pass(alg) else None)
        sums, norms = optimizer_step(engines_now, batches, len(step.micro),
                                     world / max(1, step.tokens), alg, cfg.rollout.temperature,
                                     logps)
        if logps is not None:
            mismatch.first_step_logprobs(terms, rows, step.micro, logps, world)
        progress.tokens_seen += sum(lengths[r] for mb in step.micro if mb.weight for r in mb.rows)
        all_reduce(sums)
        tok = max(1.0, sums[-1].item())
        record = {key: sums[i].item() / tok for i, key in enumerate(STAT_KEYS)}
        record = {"loss": record.pop("pg_loss")} | record | lrs | {
            "grad_norm": norms.get("actor", math.nan), "tokens": int(sums[-1].item()),
            "carried_state": carried}
        if critic is not None:
            record["critic_grad_norm"] = norms.get("critic", math.nan)
        record |= M.health(rows, terms, step.rows, batch.zero_spread)
        progress.steps.append(record)
        progress.next_step = k + 1
        S.log(rank, f"update iter {spec.iteration}: step {k + 1}/{per_iter}: loss "
                    f"{record['loss']:.4f} grad norm {record['grad_norm']:.3f}")
        faults.point("update.step_end", spec.iteration)
        if preemption is not None and any_rank(preemption.requested):
            progress.seconds += time.perf_counter() - t0
            progress.train_seconds += time.perf_counter() - t_train
            S.save_resume(Path(spec.update_dir) / "resume", actor, critic, terms, progress,
                          rank)
            preemption.requeue(rank)
    progress.train_seconds += time.perf_counter() - t_train
    return t_train


def finish(spec: UpdateSpec, cfg: Any, engines: Engines, batch: Batch, terms: Terms,
           progress: S.Progress, rank: int, world: int, t0: float, t_train: float,
           export: Export) -> dict[str, Any]:
    """The export (`export`: "all", the new policy and the state for update i+1, then
    retention; "policy"; "none"), then the metrics (rank 0). Every rank returns its
    weights' hash; rank 0 the metrics."""
    alg = cfg.algorithm
    per_iter = len(batch.plan)
    t_export = time.perf_counter()
    weights_hash = None
    if export == "all":
        weights_hash = S.export(spec, cfg, engines.actor, engines.critic, engines.tokenizer,
                                rank)
    elif export == "policy":
        weights_hash = S.export_policy(spec, cfg, engines.actor, engines.tokenizer, rank)[1]
    elif world > 1:
        weights_hash = S.state_hash(S.full_state(engines.actor, alg.zero_stage))
    t_export = time.perf_counter() - t_export
    if rank != 0:
        torch.distributed.barrier()
        return {"rank": rank, "weights_sha256": weights_hash}
    metrics = M.summary(spec.iteration, cfg, batch.rows, terms, batch.zero_spread, progress,
                        t0, world, batch.excluded)
    metrics["weights_sha256"] = weights_hash
    scalars.write(spec.config_path, "update", spec.iteration,
                  M.points(metrics, spec.iteration * per_iter))
    write_json(Path(spec.update_dir) / "metrics.json", metrics)
    shutil.rmtree(Path(spec.update_dir) / "resume", ignore_errors=True)
    if export == "all":
        S.retention(spec, alg.keep_state_iterations)
    torch.distributed.barrier()
    S.log(rank, f"update iter {spec.iteration}: loss {metrics['loss']:.4f}, reward "
                f"{metrics['reward_mean']:.3f}, grad norm {metrics['grad_norm']:.3f}, "
                f"{metrics['seconds']:.1f} s ({t_train - t0:.1f} s setup, "
                f"{progress.train_seconds:.1f} s {per_iter} steps, {t_export:.1f} s export)")
    return metrics


def optimizer_step(engines: dict[str, Any], batches: Iterable[dict[str, torch.Tensor]], n: int,
                   scale: float, alg: Any, temperature: float,
                   logps: Optional[list[torch.Tensor]] = None
                   ) -> tuple[torch.Tensor, dict[str, float]]:
    """One optimizer step of each engine ("actor", "critic") over `n` micro-batches.

    Returns this rank's sums of STAT_KEYS and of the token weights, and each engine's
    gradient norm before clipping. `logps`, if given, receives each micro-batch's policy
    log-probs of its assistant tokens (before this step's change of the weights).
    """
    sums = torch.zeros(len(STAT_KEYS) + 1, dtype=torch.float64)
    norms: dict[str, float] = {}
    for j, b in enumerate(batches):
        boundary = j == n - 1
        stats: dict[str, torch.Tensor] = {}
        for name, engine in engines.items():
            engine.set_gradient_accumulation_boundary(boundary)
            loss, s = (actor_loss(engine, b, alg, temperature) if name == "actor"
                       else critic_loss(engine, b, alg))
            engine.backward(loss * scale, scale_wrt_gas=False)
            if boundary and engine.zero_optimization_stage() == 0:
                # stage 0 has averaged the gradients over ranks by now
                norms[name] = A.grad_norm(p.grad for p in engine.module.parameters()
                                          if p.grad is not None)
            engine.step()
            stats |= s
        if logps is not None:
            logps.append(stats["logp"])
        with torch.no_grad():
            w = b["weight"]
            sums += torch.tensor([A.masked_sum(stats[k], w).item() if k in stats else 0.0
                                  for k in STAT_KEYS] + [w.sum().item()], dtype=torch.float64)
    for name, engine in engines.items():
        ds_norm = engine.get_global_grad_norm()  # ZeRO and bf16 optimizers report it
        if ds_norm is not None:
            norms[name] = float(ds_norm)
    return sums, norms


def flush_subnormals() -> None:
    """Flush subnormal floats to zero on the CPU. The backward pass through a
    low-temperature softmax is full of them, and x86 multiplies them about 3x slower: one
    micro-batch of 8 x 234 tokens of the embedded model took 25 s backward, 8 s with this
    (fp32, 2 cores). Values under 1.2e-38 become 0, far below what a gradient step sees."""
    torch.set_flush_denormal(True)


def all_reduce(t: torch.Tensor, op: Any = torch.distributed.ReduceOp.SUM) -> torch.Tensor:
    """all_reduce a CPU tensor in place on any backend (nccl reduces CUDA tensors only)."""
    if torch.distributed.get_backend() != "nccl":
        torch.distributed.all_reduce(t, op=op)
        return t
    on_gpu = t.to(torch.device("cuda", torch.cuda.current_device()))
    torch.distributed.all_reduce(on_gpu, op=op)
    return t.copy_(on_gpu.cpu())


def any_rank(flag: bool) -> bool:
    """Whether `flag` is set on any rank (a collective: every rank must call it)."""
    t = all_reduce(torch.tensor([1.0 if flag else 0.0]), torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)
