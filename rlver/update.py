"""Update: one policy update (GRPO, or PPO with a critic) over an iteration's rollouts, on
DeepSpeed, submitted through submitit.

`run_update` (the stage) checks its inputs, submits `UpdateJob` through submitit — the
local executor on one machine, Slurm on a cluster (`cluster.launcher`) — waits for it
and surfaces the job id and log on failure. The job sets up torch.distributed from
submitit's environment and runs `train` on every rank.

What the job reads and writes, for iteration i (`iter_i/update/` = `update_dir`):

- reads iter_i/policy, iter_i/rollouts, and the trainer state of update i-1
  (iter_{i-1}/update/state: DeepSpeed checkpoints with the optimizer moments; PPO also
  iter_{i-1}/update/critic: the critic in safetensors). Training continues from them as
  one long run would; without them (iteration 0, or deleted by retention) the optimizer
  starts fresh and the critic starts from the policy's backbone with a zero value head.
- writes iter_{i+1}/policy (HF, safetensors), metrics.json, tensorboard/, and, unless
  this is the run's last iteration, its own state/ and critic/ for update i+1. State of
  iterations <= i - algorithm.keep_state_iterations is deleted.
- on preemption or timeout (submitit's signal) every rank saves a DeepSpeed checkpoint
  to resume/ at the next optimizer-step boundary and the job requeues itself
  (`UpdateJob.checkpoint`); the requeued job continues from that step, and the final
  weights are those of an uninterrupted run. resume/ is removed when the update is done.

Losses are token means over all assistant tokens of a mini-batch (every rank, every
micro-batch): each micro-batch's token sum is scaled by world_size / mini-batch tokens,
undoing DeepSpeed's average over ranks, so the gradient is the same however the rows are
split over ranks and micro-batches.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import submitit
import torch

from rlver.errors import RlverInputError
from rlver.io import write_json

#: Per-row tensors over the row's assistant tokens, computed once before the first step.
Terms = dict[int, dict[str, torch.Tensor]]


@dataclass(frozen=True)
class UpdateSpec:
    """Everything an update job needs; plain data so submitit can pickle it."""

    config_path: str
    iteration: int
    policy_dir: str
    rollout_paths: tuple[str, ...]
    out_policy_dir: str
    update_dir: str

    @property
    def prev_update_dir(self) -> Optional[Path]:
        """iter_{i-1}/update, next to this update's folder (the run's layout)."""
        if self.iteration == 0:
            return None
        here = Path(self.update_dir)
        return here.parents[1] / f"iter_{self.iteration - 1:04d}" / here.name

    @property
    def reference_dir(self) -> Path:
        """The KL reference: the run's base policy, results/<run>/iter_0000/policy."""
        return Path(self.config_path).parent / "iter_0000" / "policy"


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


def submit_update(spec: UpdateSpec) -> Any:
    """Check the inputs and submit the job (one task per rank); returns the submitit job."""
    from rlver import config as config_mod

    check_inputs(spec)
    cfg = config_mod.load(spec.config_path)
    cl = cfg.cluster
    executor = submitit.AutoExecutor(folder=Path(spec.update_dir) / "submitit",
                                     cluster=cl.launcher, slurm_max_num_timeout=cl.max_requeues)
    executor.update_parameters(**job_parameters(cfg, spec.iteration))
    _cancel_earlier_job(Path(spec.update_dir))
    job = executor.submit(UpdateJob(), spec)
    write_json(Path(spec.update_dir) / JOB_FILE, {"job_id": job.job_id, "launcher": cl.launcher})
    print(f"update iter {spec.iteration}: submitted job {job.job_id} ({cl.launcher}); "
          f"logs: {job.paths.stdout.parent}", file=sys.stderr, flush=True)
    return job


def job_parameters(cfg: Any, iteration: int) -> dict[str, Any]:
    """submitit's parameters for the update job, from `cluster.*`."""
    cl = cfg.cluster
    params: dict[str, Any] = {
        "timeout_min": cl.timeout_min,
        "nodes": cl.nodes,
        "tasks_per_node": cl.tasks_per_node,
        # local: the GPUs the job sees (CUDA_VISIBLE_DEVICES=0..n-1; 0 runs on the CPU).
        "gpus_per_node": cl.gpus_per_node,
        "name": f"rlver-update-{cfg.run}-{iteration:04d}",
    }
    if cl.launcher == "slurm":
        params |= {
            "cpus_per_task": cl.cpus_per_task,
            "slurm_partition": cl.partition or None,
            "slurm_account": cl.account or None,
            "slurm_qos": cl.qos or None,
            "slurm_additional_parameters": dict(cl.slurm_additional_parameters),
            "slurm_signal_delay_s": cl.signal_delay_s,
        }
        if cl.mem_gb:
            params["mem_gb"] = cl.mem_gb
    return {k: v for k, v in params.items() if v is not None}


#: The id of the update's latest Slurm job, next to its submitit folder.
JOB_FILE = "job.json"


def _cancel_earlier_job(update_dir: Path, wait_s: float = 300.0) -> None:
    """Stop a job of this update that is still running, and wait until it is gone.

    Killing Snakemake kills the process that waits on the update, not the job it
    submitted: a Slurm job runs on, and so does a local one (submitit's local controller
    and its tasks are left to init and ignore SIGTERM, as Slurm jobs do). Without this,
    the rerun's job and the orphan would write the same folders.
    """
    import subprocess

    path = update_dir / JOB_FILE
    if not path.is_file():
        return
    info = json.loads(path.read_text())
    job_id = str(info["job_id"])
    if info.get("launcher") == "slurm":
        def alive() -> bool:
            res = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"],
                                 capture_output=True, text=True, check=False)
            return res.returncode == 0 and res.stdout.strip() not in (
                "", "COMPLETED", "CANCELLED", "FAILED", "TIMEOUT")

        def stop() -> None:
            subprocess.run(["scancel", job_id], check=False)
    else:
        folder = str(update_dir / "submitit")
        pids = local_job_processes(int(job_id), folder)

        def alive() -> bool:
            return any(_running(pid) for pid in pids)

        def stop() -> None:
            # Frozen first, so the controller cannot start a task between the look at its
            # children and the kill.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pids[0], signal.SIGSTOP)
            pids[:] = local_job_processes(int(job_id), folder) or pids
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    if not alive():
        return
    print(f"update: stopping job {job_id}, an earlier submission of this update that is "
          "still running (its Snakemake was killed)", file=sys.stderr, flush=True)
    stop()
    deadline = time.monotonic() + wait_s
    while alive():
        if time.monotonic() > deadline:
            raise RuntimeError(f"update: job {job_id} (an earlier submission of this update) "
                               f"is still running {wait_s:.0f} s after it was stopped. Fix: "
                               "stop it by hand (scancel, or kill its processes) and rerun.")
        time.sleep(1)
    if info.get("launcher") != "slurm":  # a Slurm job's node may keep its own cache
        _clear_extension_locks(since=path.stat().st_mtime)


def _clear_extension_locks(since: float) -> None:
    """Remove torch extension build locks created since `since` (the killed job's
    submission). Loading a DeepSpeed op takes `<TORCH_EXTENSIONS_DIR>/<op>/lock` for a
    moment even when the op is built; a task killed in that moment leaves the lock behind,
    and every later load, the rerun's included, waits on it forever. A lock that a living
    process holds open (another run's job building or loading the op) is left alone."""
    from torch.utils.cpp_extension import get_default_build_root

    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    recent = []
    for lock in [*root.glob("*/lock"), *root.glob("*/*/lock")]:
        with contextlib.suppress(OSError):
            if lock.stat().st_mtime >= since:
                recent.append(lock)
    held = _held_open(recent)  # a scan of /proc, only when there is something to check
    for lock in recent:
        with contextlib.suppress(OSError):
            if str(lock.resolve()) not in held:
                lock.unlink()
                print(f"update: removed {lock}, left by the stopped job", file=sys.stderr,
                      flush=True)


def _held_open(paths: list[Path]) -> set[str]:
    """Those of `paths` that some process has open (torch's FileBaton keeps its lock file
    open until it releases it), read from /proc; empty where there is no /proc."""
    wanted = {str(p.resolve()) for p in paths}
    held: set[str] = set()
    if not wanted:
        return held
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target in wanted:
                held.add(target)
    return held


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (a container's init may never reap one)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def local_job_processes(controller: int, folder: str) -> list[int]:
    """The controller of a submitit local job (its job id is the controller's pid) and its
    tasks, if that pid is still this job's controller (pids are reused); else []."""
    def cmdline(pid: int) -> str:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            return ""

    if "submitit.local._local" not in cmdline(controller) or folder not in cmdline(controller):
        return []
    pids = [controller]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == controller:
            pids.append(int(stat.parent.name))
    return pids


def run_update(spec: UpdateSpec) -> dict[str, Any]:
    """Stage `update`: submit the job, wait (through any requeues), return rank 0's metrics."""
    job = submit_update(spec)
    try:
        results = job.results()
    except Exception as exc:
        raise RuntimeError(
            f"update job {job.job_id} failed; its log: {job.paths.stderr}\n{exc}"
        ) from exc
    return results[0]


class UpdateJob(submitit.helpers.Checkpointable):
    """The submitit job body, run once per rank.

    `resume`: this is a requeued job; continue from update_dir/resume if a checkpoint
    was completed there (a signal that came before the first step leaves none).
    """

    def __init__(self, resume: bool = False) -> None:
        self.resume = resume

    def __call__(self, spec: UpdateSpec) -> dict[str, Any]:
        from rlver import config as config_mod

        cfg = config_mod.load(spec.config_path)
        # torch.distributed's variables come from submitit's view of this job only: any
        # inherited from the submitting process (an in-process vLLM engine sets
        # LOCAL_WORLD_SIZE, for one) describe another job, so they are overwritten.
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False,
                                                              overwrite=True)
        return train(spec, cfg, resume=self.resume, preemption=Preemption())

    def checkpoint(self, spec: UpdateSpec) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on rank 0 after `train` saved update_dir/resume: requeue."""
        return submitit.helpers.DelayedSubmission(UpdateJob(resume=True), spec)


class Preemption:
    """Defers submitit's preemption/timeout handler to the next optimizer-step boundary.

    The signal only sets a flag; `train` checks it (on all ranks at once) after each
    step, saves a DeepSpeed checkpoint together, and then hands over to submitit's own
    handler, which calls `UpdateJob.checkpoint`, requeues the job and exits. A DeepSpeed
    checkpoint is collective, so it cannot be written from inside the handler.
    """

    def __init__(self) -> None:
        self.signum = submitit.JobEnvironment._usr_sig()
        self.requested = False
        self._submitit_handler = signal.getsignal(self.signum)
        signal.signal(self.signum, self._note)

    def _note(self, signum: int, frame: Any) -> None:
        self.requested = True
        print(f"update: caught signal {signal.Signals(signum).name}; checkpointing at the "
              "end of this step", file=sys.stderr, flush=True)

    def requeue(self, rank: int) -> None:
        """Hand over to submitit on rank 0 (requeue and exit); the other ranks just exit."""
        if rank == 0 and callable(self._submitit_handler):
            self._submitit_handler(self.signum, None)
            raise RuntimeError("update: submitit's handler did not requeue the job")
        sys.exit(0)


# ----------------------------------------------------------------------------- the plan


@dataclass
class MicroBatch:
    rows: list[int]
    #: 0 for a filler that only keeps a rank in step with the others' collectives.
    weight: float = 1.0


@dataclass
class Step:
    """One optimizer step on this rank: its micro-batches and the mini-batch's tokens."""

    micro: list[MicroBatch]
    tokens: int


def pack(rows: list[int], lengths: list[int], max_rows: int, max_tokens: int) -> list[list[int]]:
    """Micro-batches of at most `max_rows` sequences and `max_tokens` padded tokens, longest
    first (little padding); a sequence over the budget gets a micro-batch of its own."""
    out: list[list[int]] = []
    for r in sorted(rows, key=lambda r: (-lengths[r], r)):
        mb = out[-1] if out else None
        fits = mb is not None and len(mb) < max_rows and (
            max_tokens == 0 or (len(mb) + 1) * lengths[mb[0]] <= max_tokens)
        if fits:
            mb.append(r)  # type: ignore[union-attr]
        else:
            out.append([r])
    return out


def spread(micro: list[list[int]], rank: int, world: int) -> list[MicroBatch]:
    """This rank's share of `micro` (round robin), padded with zero-weight fillers so that
    every rank runs the same number: 2 ranks x N == 1 rank x 2N of the same micro-batches."""
    mine = [MicroBatch(m) for m in micro[rank::world]]
    while len(mine) < math.ceil(len(micro) / world):
        mine.append(MicroBatch(micro[0][:1], weight=0.0))
    return mine


def make_plan(lengths: list[int], actions: list[int], alg: Any, seed: int, iteration: int,
              rank: int, world: int) -> list[Step]:
    """Every optimizer step of the update: epochs x mini-batches, each a seeded shuffle of
    the rows split evenly, packed into micro-batches (the same on every world size)."""
    from rlver.config import derive_seed

    n = len(lengths)
    if n < alg.mini_batches:
        raise RlverInputError(f"update: {n} rollout rows cannot fill algorithm.mini_batches="
                              f"{alg.mini_batches} mini-batches. Fix: lower it.")
    steps = []
    for epoch in range(alg.ppo_epochs):
        order = list(range(n))
        random.Random(derive_seed(seed, "update", iteration, epoch)).shuffle(order)
        for m in range(alg.mini_batches):
            chunk = order[m * n // alg.mini_batches : (m + 1) * n // alg.mini_batches]
            micro = pack(chunk, lengths, alg.micro_batch_size, alg.micro_batch_tokens)
            steps.append(Step(spread(micro, rank, world), sum(actions[r] for r in chunk)))
    return steps


# ----------------------------------------------------------------------------- models


class PolicyLM(torch.nn.Module):
    """The causal LM, returning logits only at the positions asked for.

    The full (B, T, vocab) logits of a multi-turn dialogue dominate the memory of a
    step; the loss needs them only before assistant tokens.
    """

    def __init__(self, lm: Any) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        hidden = self.lm.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                    use_cache=False).last_hidden_state
        return self.lm.get_output_embeddings()(hidden[rows, cols])


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

    module.train()
    engine, *_ = deepspeed.initialize(
        model=module, model_parameters=[p for p in module.parameters() if p.requires_grad],
        config=deepspeed_config(alg, lr, grad_accum, world))
    return engine


# ----------------------------------------------------------------------------- batches


def action_positions(row: dict[str, Any]) -> list[int]:
    """Assistant tokens that have a prediction (position 0 has none)."""
    return [t for t, m in enumerate(row["loss_mask"]) if m and t > 0]


def collate(rows: list[dict[str, Any]], terms: list[dict[str, torch.Tensor]], weight: float,
            pad_id: int, device: Any) -> dict[str, torch.Tensor]:
    """Padded ids and mask, the (row, position) of every assistant token with its id
    (`targets`), and the per-token terms flattened in the same order."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    rows_idx, cols = [], []
    for i, r in enumerate(rows):
        ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
        attention[i, : len(r["input_ids"])] = 1
        pos = action_positions(r)
        rows_idx += [i] * len(pos)
        cols += pos
    out = {"input_ids": ids, "attention_mask": attention, "rows": torch.tensor(rows_idx),
           "cols": torch.tensor(cols, dtype=torch.long)}
    for key in terms[0]:
        out[key] = torch.cat([t[key] for t in terms])
    out["targets"] = ids[out["rows"], out["cols"]]
    out["weight"] = torch.full((len(cols),), weight)
    return {k: v.to(device) for k, v in out.items()}


def actor_loss(actor: Any, b: dict[str, torch.Tensor], alg: Any,
               temperature: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(sum of per-token losses, per-token stats) of one micro-batch."""
    from rlver import algorithms as A

    logits = actor(b["input_ids"], b["attention_mask"], b["rows"], b["cols"] - 1)
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)
    logp = logp_all.gather(-1, b["targets"].unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    pg_loss, clipped = A.clipped_surrogate(logp, b["old_logp"], b["adv"], alg.clip_ratio)
    loss = pg_loss - alg.entropy_coef * entropy
    stats = {"pg_loss": pg_loss, "clip_frac": clipped, "entropy": entropy}
    if alg.kl_coef > 0:
        kl = A.kl_penalty(logp, b["ref_logp"], alg.kl_estimator)
        loss = loss + alg.kl_coef * kl
        stats["kl_ref"] = kl
    log_ratio = logp - b["old_logp"]
    stats["approx_kl"] = torch.exp(log_ratio) - 1 - log_ratio
    return A.masked_sum(loss, b["weight"]), stats


def critic_loss(critic: Any, b: dict[str, torch.Tensor],
                alg: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    from rlver import algorithms as A

    values = critic(b["input_ids"], b["attention_mask"])[b["rows"], b["cols"]]
    loss, clipped = A.clipped_value_loss(values, b["old_values"], b["returns"], alg.value_clip)
    return A.masked_sum(loss, b["weight"]), {"value_loss": loss, "value_clip_frac": clipped}


#: Per-token statistics summed over a step (then divided by its token count).
STAT_KEYS = ("pg_loss", "clip_frac", "entropy", "approx_kl", "kl_ref", "value_loss",
             "value_clip_frac")


def optimizer_step(engines: dict[str, Any], batches: Iterable[dict[str, torch.Tensor]], n: int,
                   scale: float, alg: Any, temperature: float
                   ) -> tuple[torch.Tensor, dict[str, float]]:
    """One optimizer step of each engine ("actor", "critic") over `n` micro-batches.

    Returns this rank's sums of STAT_KEYS and of the token weights, and each engine's
    gradient norm before clipping.
    """
    from rlver import algorithms as A

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
        with torch.no_grad():
            w = b["weight"]
            sums += torch.tensor([A.masked_sum(stats[k], w).item() if k in stats else 0.0
                                  for k in STAT_KEYS] + [w.sum().item()], dtype=torch.float64)
    for name, engine in engines.items():
        ds_norm = engine.get_global_grad_norm()  # ZeRO and bf16 optimizers report it
        if ds_norm is not None:
            norms[name] = float(ds_norm)
    return sums, norms


# ----------------------------------------------------------------------------- terms


def precompute(rows: list[dict[str, Any]], alg: Any, critic: Any, spec: UpdateSpec,
               rank: int, world: int, pad_id: int, device: Any) -> Terms:
    """Per-row rollout-time terms every rank needs: the critic's values (PPO) and the
    reference log-probs (KL). Each rank computes its share; all ranks get all rows."""
    from rlver.models import load_policy

    reference = None
    if alg.kl_coef > 0:
        ref_model, _ = load_policy(spec.reference_dir)
        reference = PolicyLM(ref_model).to(device)
    lengths = [len(r["input_ids"]) for r in rows]
    micro = spread(pack(list(range(len(rows))), lengths, alg.micro_batch_size,
                        alg.micro_batch_tokens), rank, world)
    mine: Terms = {}
    with torch.no_grad():
        for mb in micro:
            empty: list[dict] = [{} for _ in mb.rows]
            b = collate([rows[r] for r in mb.rows], empty, 0.0, pad_id, device)  # type: ignore[arg-type]
            sizes = [len(action_positions(rows[r])) for r in mb.rows]
            out: dict[str, list[torch.Tensor]] = {}
            if critic is not None:
                values = critic(b["input_ids"], b["attention_mask"])[b["rows"], b["cols"]]
                out["old_values"] = list(values.float().cpu().split(sizes))
            if reference is not None:
                logits = reference(b["input_ids"], b["attention_mask"], b["rows"], b["cols"] - 1)
                logp = torch.log_softmax(logits.float(), -1).gather(
                    -1, b["targets"].unsqueeze(-1)).squeeze(-1)
                out["ref_logp"] = list(logp.cpu().split(sizes))
            if mb.weight:
                for k, r in enumerate(mb.rows):
                    mine[r] = {key: v[k] for key, v in out.items()}
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, mine)
    return {r: t for part in gathered for r, t in part.items()}


def advantages(rows: list[dict[str, Any]], terms: Terms, alg: Any) -> Terms:
    """Per-row token tensors for the losses: old log-probs, advantages (and for PPO the
    returns), from the rewards and the precomputed terms."""
    from rlver import algorithms as A

    rewards = torch.tensor([r["reward"] for r in rows], dtype=torch.float32)
    positions = [action_positions(r) for r in rows]
    out: Terms = {}
    for i, (r, pos) in enumerate(zip(rows, positions, strict=True)):
        out[i] = {"old_logp": torch.tensor(r["logprobs"], dtype=torch.float32)[pos]}
        out[i] |= {k: terms[i][k] for k in ("ref_logp", "old_values") if k in terms.get(i, {})}
    # credit=turn (nothink only, checked by config.validate): per reply, not per dialogue.
    spans = [A.turn_spans(pos) for pos in positions] if alg.credit == "turn" else None
    if alg.name == "grpo":
        groups = [r["group_id"] for r in rows]
        if spans is None:
            adv = A.group_advantages(rewards, groups, alg.adv_eps, alg.adv_std)
            for i, pos in enumerate(positions):
                out[i]["adv"] = torch.full((len(pos),), adv[i].item())
            return out
        returns = [A.turn_returns(r["emotion_start"], r["emotion"], len(ss))
                   for r, ss in zip(rows, spans, strict=True)]
        turn_adv = A.turn_group_advantages(returns, groups, alg.adv_eps, alg.adv_std)
        for i, ss in enumerate(spans):
            out[i]["adv"] = torch.tensor([a for a, s in zip(turn_adv[i], ss, strict=True)
                                          for _ in s], dtype=torch.float32)
        return out
    width = max(len(r["input_ids"]) for r in rows)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    values = torch.zeros((len(rows), width))
    for i, pos in enumerate(positions):
        mask[i, pos] = True
        values[i, pos] = terms[i]["old_values"]
    if spans is None:
        token_rewards = A.last_token_rewards(rewards, mask)
    else:
        token_rewards = A.turn_end_rewards(
            [A.turn_rewards(r["emotion_start"], r["emotion"], len(ss))
             for r, ss in zip(rows, spans, strict=True)], spans, width)
    adv_t, ret_t = A.gae(token_rewards, values, mask, alg.gamma, alg.gae_lambda)
    if alg.norm_adv:
        adv_t = A.whiten(adv_t, mask)
    for i, pos in enumerate(positions):
        out[i] |= {"adv": adv_t[i, pos], "returns": ret_t[i, pos]}
    return out


# ----------------------------------------------------------------------------- training


@dataclass
class Progress:
    """What a resumed job needs besides the engines: where to continue, the per-step
    metrics so far and the time already spent."""

    next_step: int = 0
    steps: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    train_seconds: float = 0.0
    tokens_seen: int = 0
    resumed_at: list[int] = field(default_factory=list)


def train(spec: UpdateSpec, cfg: Any, resume: bool = False,
          preemption: Optional[Preemption] = None) -> dict[str, Any]:
    """The update on this rank. Every rank returns its weights' hash; rank 0's result is
    the metrics (also written to metrics.json)."""
    import deepspeed

    from rlver import algorithms as A
    from rlver.critic import critic_from_policy, load_critic
    from rlver.models import load_policy
    from rlver.schema import read_rows

    t0 = time.perf_counter()
    alg = cfg.algorithm
    ppo = alg.name == "ppo"
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(max(1, cfg.cluster.cpus_per_task))
    flush_subnormals()
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    device = torch.device("cpu")
    if torch.cuda.is_available():
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
        torch.cuda.set_device(device)
    update_dir = Path(spec.update_dir)
    resume_dir = update_dir / "resume"
    if rank == 0 and not resume:
        shutil.rmtree(resume_dir, ignore_errors=True)  # a leftover of a killed job

    rows = read_rows(list(spec.rollout_paths))
    lengths = [len(r["input_ids"]) for r in rows]
    actions = [len(action_positions(r)) for r in rows]
    plan = make_plan(lengths, actions, alg, cfg.seed, spec.iteration, rank, world)
    grad_accum = max(len(s.micro) for s in plan)
    per_iter = len(plan)
    total_steps = cfg.iterations * per_iter

    model, tokenizer = load_policy(spec.policy_dir, "float32")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    actor = make_engine(PolicyLM(model), alg, alg.lr, grad_accum, world)
    critic = None
    prev = spec.prev_update_dir
    if ppo:
        carried_critic = prev is not None and (prev / "critic" / "model.safetensors").is_file()
        value_model = (load_critic(prev / "critic") if carried_critic  # type: ignore[operator]
                       else critic_from_policy(spec.policy_dir))
        _log(rank, f"update iter {spec.iteration}: critic "
                   + (f"carried from {prev}/critic" if carried_critic else
                      "new: the policy's backbone with a zero value head"))
        critic = make_engine(value_model, alg, alg.critic_lr, grad_accum, world)
    progress = _load_resume(resume_dir, actor, critic, world) if resume else None
    if progress is not None:
        terms = torch.load(resume_dir / "terms.pt", weights_only=True)
        carried = bool(progress.steps and progress.steps[0].get("carried_state"))
        _log(rank, f"update iter {spec.iteration}: resumed at step {progress.next_step + 1}"
                   f"/{per_iter} from {resume_dir}")
    else:
        progress = Progress()
        carried = _load_carried(prev, spec, actor, critic, rank)
        terms = advantages(rows, precompute(rows, alg, critic, spec, rank, world, pad_id,
                                            device) if (ppo or alg.kl_coef > 0) else {}, alg)

    t_train = time.perf_counter()
    for k in range(progress.next_step, per_iter):
        step = plan[k]
        global_step = spec.iteration * per_iter + k
        lrs = {"lr": A.warmup_lr(global_step, total_steps, alg.lr, alg.warmup_ratio)}
        engines = {"actor": actor}
        if critic is not None:
            engines["critic"] = critic
            lrs["critic_lr"] = A.warmup_lr(global_step, total_steps, alg.critic_lr,
                                           alg.critic_warmup_ratio)
        for name, engine in engines.items():
            for group in engine.optimizer.param_groups:
                group["lr"] = lrs["lr" if name == "actor" else "critic_lr"]
        batches = (collate([rows[r] for r in mb.rows], [terms[r] for r in mb.rows], mb.weight,
                           pad_id, device) for mb in step.micro)
        sums, norms = optimizer_step(engines, batches, len(step.micro), world / max(1, step.tokens),
                                     alg, cfg.rollout.temperature)
        progress.tokens_seen += sum(lengths[r] for mb in step.micro if mb.weight for r in mb.rows)
        _all_reduce(sums)
        tok = max(1.0, sums[-1].item())
        record = {key: sums[i].item() / tok for i, key in enumerate(STAT_KEYS)}
        record = {"loss": record.pop("pg_loss")} | record | lrs | {
            "grad_norm": norms.get("actor", math.nan), "tokens": int(sums[-1].item()),
            "carried_state": carried}
        if critic is not None:
            record["critic_grad_norm"] = norms.get("critic", math.nan)
        progress.steps.append(record)
        progress.next_step = k + 1
        _log(rank, f"update iter {spec.iteration}: step {k + 1}/{per_iter}: loss "
                   f"{record['loss']:.4f} grad norm {record['grad_norm']:.3f}")
        if preemption is not None and k + 1 < per_iter and _any_rank(preemption.requested):
            progress.seconds += time.perf_counter() - t0
            progress.train_seconds += time.perf_counter() - t_train
            _save_resume(resume_dir, actor, critic, terms, progress, rank)
            preemption.requeue(rank)
    progress.train_seconds += time.perf_counter() - t_train

    t_export = time.perf_counter()
    weights_hash = _export(spec, cfg, actor, critic, tokenizer, rank)
    t_export = time.perf_counter() - t_export
    if rank != 0:
        torch.distributed.barrier()
        return {"rank": rank, "weights_sha256": weights_hash}
    metrics = _metrics(spec, cfg, rows, terms, progress, t0, world)
    metrics["weights_sha256"] = weights_hash
    _tensorboard(update_dir / "tensorboard", metrics, spec.iteration * per_iter)
    write_json(update_dir / "metrics.json", metrics)
    shutil.rmtree(resume_dir, ignore_errors=True)
    _retention(spec, alg.keep_state_iterations)
    torch.distributed.barrier()
    _log(rank, f"update iter {spec.iteration}: loss {metrics['loss']:.4f}, reward "
               f"{metrics['reward_mean']:.3f}, grad norm {metrics['grad_norm']:.3f}, "
               f"{metrics['seconds']:.1f} s ({t_train - t0:.1f} s setup, "
               f"{progress.train_seconds:.1f} s {per_iter} steps, {t_export:.1f} s export)")
    return metrics


def _log(rank: int, text: str) -> None:
    if rank == 0:
        print(text, file=sys.stderr, flush=True)


def flush_subnormals() -> None:
    """Flush subnormal floats to zero on the CPU. The backward pass through a
    low-temperature softmax is full of them, and x86 multiplies them about 3x slower: one
    micro-batch of 8 x 234 tokens of the embedded model took 25 s backward, 8 s with this
    (fp32, 2 cores). Values under 1.2e-38 become 0, far below what a gradient step sees."""
    torch.set_flush_denormal(True)


def _all_reduce(t: torch.Tensor, op: Any = torch.distributed.ReduceOp.SUM) -> torch.Tensor:
    """all_reduce a CPU tensor in place on any backend (nccl reduces CUDA tensors only)."""
    if torch.distributed.get_backend() != "nccl":
        torch.distributed.all_reduce(t, op=op)
        return t
    on_gpu = t.to(torch.device("cuda", torch.cuda.current_device()))
    torch.distributed.all_reduce(on_gpu, op=op)
    return t.copy_(on_gpu.cpu())


def _any_rank(flag: bool) -> bool:
    t = _all_reduce(torch.tensor([1.0 if flag else 0.0]), torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)


def _metrics(spec: UpdateSpec, cfg: Any, rows: list[dict[str, Any]], terms: Terms,
             progress: Progress, t0: float, world: int) -> dict[str, Any]:
    """The update's summary: token-weighted means over its steps, and the batch's stats."""
    from rlver import algorithms as A

    steps = progress.steps
    tokens = sum(s["tokens"] for s in steps)
    mean = {k: sum(s[k] * s["tokens"] for s in steps) / max(1, tokens)
            for k in ("loss", "clip_frac", "approx_kl", "entropy")}
    rewards = torch.tensor([r["reward"] for r in rows], dtype=torch.float32)
    seconds = progress.seconds + time.perf_counter() - t0
    metrics: dict[str, Any] = {
        "iteration": spec.iteration,
        "algorithm": cfg.algorithm.name,
        "loss": mean["loss"],
        "clip_fraction": mean["clip_frac"],
        "approx_kl": mean["approx_kl"],
        "entropy": mean["entropy"],
        "reward_mean": rewards.mean().item(),
        "reward_std": rewards.std(unbiased=False).item(),
        "num_samples": len(rows),
        "num_tokens": sum(len(action_positions(r)) for r in rows),
        "grad_norm": sum(s["grad_norm"] for s in steps) / len(steps),
        "lr": steps[-1]["lr"],
        "optimizer_steps": len(steps),
        "world_size": world,
        "carried_state": steps[0]["carried_state"],
        "resumed_at_steps": progress.resumed_at,
        "seconds": seconds,
        "tokens_per_s": progress.tokens_seen / max(1e-9, progress.train_seconds),
        "steps": steps,
    }
    if cfg.algorithm.kl_coef > 0:
        metrics["kl_ref"] = sum(s["kl_ref"] * s["tokens"] for s in steps) / max(1, tokens)
    if cfg.algorithm.name == "ppo":
        values = torch.cat([terms[i]["old_values"] for i in range(len(rows))])
        returns = torch.cat([terms[i]["returns"] for i in range(len(rows))])
        metrics |= {
            "value_loss": sum(s["value_loss"] * s["tokens"] for s in steps) / max(1, tokens),
            "value_clip_fraction": sum(s["value_clip_frac"] * s["tokens"] for s in steps)
            / max(1, tokens),
            "explained_variance": A.explained_variance(values, returns,
                                                       torch.ones_like(values)),
            "value_mean": values.mean().item(),
            "critic_grad_norm": sum(s["critic_grad_norm"] for s in steps) / len(steps),
            "critic_lr": steps[-1]["critic_lr"],
        }
    return metrics


# ----------------------------------------------------------------------------- state


def _full_state(engine: Any, zero_stage: int) -> Optional[dict[str, torch.Tensor]]:
    """The full weights on rank 0 (None elsewhere under ZeRO-3); under ZeRO-3 every rank
    must join the gather."""
    if zero_stage == 3:
        return engine._zero3_consolidated_16bit_state_dict()
    return engine.module.state_dict()


def _state_hash(state: Optional[dict[str, torch.Tensor]]) -> Optional[str]:
    if state is None:
        return None
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _export(spec: UpdateSpec, cfg: Any, actor: Any, critic: Any, tokenizer: Any,
            rank: int) -> Optional[str]:
    """Write iter_{i+1}/policy, and the state for update i+1 unless this was the run's
    last update or retention keeps none; returns this rank's hash of its weights (several
    ranks only)."""
    from rlver.critic import save_critic
    from rlver.io import atomic_path, weights_sha256

    alg = cfg.algorithm
    state = _full_state(actor, alg.zero_stage)
    lm_state = None if state is None else {k.removeprefix("lm."): v for k, v in state.items()}
    if rank == 0:
        with atomic_path(spec.out_policy_dir) as tmp:
            actor.module.lm.save_pretrained(tmp, state_dict=lm_state, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
    # Ranks hold replicas of the weights (ZeRO 0-2): their hashes show they agree.
    weights_hash = _state_hash(state) if torch.distributed.get_world_size() > 1 else None
    if spec.iteration + 1 >= cfg.iterations or alg.keep_state_iterations == 0:
        return weights_hash
    update_dir = Path(spec.update_dir)
    partial = update_dir / ".state.partial"
    _save_engines(partial, actor, critic, "state", rank)
    if critic is not None:
        critic_state = _full_state(critic, alg.zero_stage)
        if rank == 0:
            with atomic_path(update_dir / "critic") as tmp:
                save_critic(critic_state, critic.module.config, tmp)  # type: ignore[arg-type]
    torch.distributed.barrier()
    if rank == 0:
        info = {"iteration": spec.iteration, "world_size": torch.distributed.get_world_size(),
                "zero_stage": alg.zero_stage, "precision": alg.precision,
                "policy_sha256": weights_sha256(spec.out_policy_dir)}
        (partial / "trainer.json").write_text(json.dumps(info, indent=2) + "\n")
        _replace_dir(partial, update_dir / "state")
    return weights_hash


def _save_engines(partial: Path, actor: Any, critic: Any, tag: str, rank: int) -> None:
    """All ranks: DeepSpeed checkpoints of the engines into a fresh `partial` folder (then
    renamed over the real one by `_replace_dir`, so a kill mid-way leaves the old one)."""
    if rank == 0:
        shutil.rmtree(partial, ignore_errors=True)
    torch.distributed.barrier()
    actor.save_checkpoint(str(partial / "actor"), tag=tag)
    if critic is not None:
        critic.save_checkpoint(str(partial / "critic"), tag=tag)


def _replace_dir(partial: Path, final: Path) -> None:
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)


def _load_carried(prev: Optional[Path], spec: UpdateSpec, actor: Any, critic: Any,
                  rank: int) -> bool:
    """Restore the optimizer state of update i-1 if it matches this policy and layout."""
    from rlver.io import weights_sha256

    why = ["this is iteration 0"]
    if prev is not None:
        info_path = prev / "state" / "trainer.json"
        why = [f"{info_path} not found (deleted by retention, or never written)"]
        if info_path.is_file() and rank == 0:
            info = json.loads(info_path.read_text())
            why = []
            if info["policy_sha256"] != weights_sha256(spec.policy_dir):
                why.append(f"it belongs to another policy than {spec.policy_dir}")
            if info["world_size"] != torch.distributed.get_world_size():
                why.append(f"it was written by {info['world_size']} ranks")
            if info["zero_stage"] != actor.zero_optimization_stage():
                why.append(f"it was written with ZeRO stage {info['zero_stage']}")
        box = [why]
        torch.distributed.broadcast_object_list(box, src=0)
        why = box[0]
    if why:
        _log(rank, f"update iter {spec.iteration}: fresh optimizer state: {'; '.join(why)}")
        return False
    assert prev is not None
    actor.load_checkpoint(str(prev / "state" / "actor"), tag="state")
    if critic is not None:
        critic.load_checkpoint(str(prev / "state" / "critic"), tag="state")
    _log(rank, f"update iter {spec.iteration}: continuing the optimizer state of {prev}")
    return True


def _save_resume(resume_dir: Path, actor: Any, critic: Any, terms: Terms, progress: Progress,
                 rank: int) -> None:
    """All ranks: a DeepSpeed checkpoint of the engines; rank 0: the terms and progress.
    Written next to resume/ and renamed over it, so a kill mid-way leaves the last one."""
    partial = resume_dir.with_name(".resume.partial")
    _save_engines(partial, actor, critic, "resume", rank)
    torch.distributed.barrier()
    if rank == 0:
        torch.save(terms, partial / "terms.pt")
        state = progress.__dict__ | {"world_size": torch.distributed.get_world_size()}
        (partial / "progress.json").write_text(json.dumps(state, indent=2) + "\n")
        _replace_dir(partial, resume_dir)
        _log(rank, f"update: saved {resume_dir} at step {progress.next_step}; requeueing")
    torch.distributed.barrier()


def _load_resume(resume_dir: Path, actor: Any, critic: Any, world: int) -> Optional[Progress]:
    path = resume_dir / "progress.json"
    if not path.is_file():
        return None
    state = json.loads(path.read_text())
    if state.pop("world_size") != world:
        raise RlverInputError(f"{resume_dir}: written by another number of ranks than {world}. "
                              "Fix: delete it to start the update over.")
    actor.load_checkpoint(str(resume_dir / "actor"), tag="resume")
    if critic is not None:
        critic.load_checkpoint(str(resume_dir / "critic"), tag="resume")
    progress = Progress(**state)
    progress.resumed_at.append(progress.next_step)
    return progress


def _retention(spec: UpdateSpec, keep: int) -> None:
    """Delete the trainer state of iterations <= i - keep (only the newest are needed)."""
    here = Path(spec.update_dir)
    for j in range(spec.iteration - keep + 1):
        old = here.parents[1] / f"iter_{j:04d}" / here.name
        for name in ("state", "critic"):
            if (old / name).exists():
                shutil.rmtree(old / name)
                print(f"update iter {spec.iteration}: deleted {old / name} (retention: "
                      f"keep_state_iterations={keep})", file=sys.stderr, flush=True)


def _tensorboard(folder: Path, metrics: dict[str, Any], first_step: int) -> None:
    """The summary at the iteration, and every optimizer step's record at its global step."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(folder)) as writer:
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and key != "iteration":
                writer.add_scalar(f"update/{key}", value, metrics["iteration"])
        for k, record in enumerate(metrics["steps"]):
            for key, value in record.items():
                writer.add_scalar(f"step/{key}", value, first_step + k)
