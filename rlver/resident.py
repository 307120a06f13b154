"""The block stage: the rollouts, updates and evaluations of iterations [first, last) in
one job (`cluster.iterations_per_job`), one process per rank, with the engines kept in
memory: the DeepSpeed engines (the policy's and PPO's critic) are created once and carry
the optimizer state from update to update; the rollout engine is created once and takes
each new policy in memory (`Engine.load_weights`). The files are those of the per-stage
rules, byte for byte (rlver/blocks.py names them): each stage runs the same functions with
the same threads.

Policies are exported only where they are kept; a policy that is not kept is hashed as
its export would be (written to memory-backed scratch and deleted), for its rollouts'
metadata. The trainer state of the block's last update is saved at the block's end,
after every `cluster.state_every` updates when that is set, and on the preemption signal
(submitit's USR2: Slurm's preemption, or `cluster.signal_delay_s` before the time limit):
at the next boundary, the end of an optimizer step (mid-update, to update/resume as the
per-stage update does) or of a stage (the state after the newest update), then the job
requeues itself. A boundary that does not come within half the signal delay (a long
evaluation) is not waited for: the job requeues without a checkpoint.

A restarted block (killed, preempted and requeued, or rerun by hand) skips the
iterations whose files are complete: it restores the newest state saved among them (else
the one saved at the block's start, update first-1's) and replays the updates after it
from their stored rollouts (the update is deterministic), then continues, so it ends with
the uninterrupted block's files. A checkpoint taken mid-update on the signal is newer than
any of those: the block continues that update from its step.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional

import submitit
import torch

from rlver import layout
from rlver.blocks import BlockFiles, block_files
from rlver.engines import Engine
from rlver.errors import RlverInputError
from rlver.io import write_json
from rlver.train import state as S
from rlver.train import trainer as T
from rlver.train.launch import job_parameters, job_results
from rlver.train.orphans import JOB_FILE, cancel_earlier_job
from rlver.train.preemption import Preemption
from rlver.train.spec import UpdateSpec


@dataclass(frozen=True)
class BlockSpec:
    """Everything a block job needs; plain data so submitit can pickle it."""

    config_path: str
    first: int
    last: int
    personas: str
    test_personas: str

    @property
    def run(self) -> layout.Run:
        return layout.Run.of_config(self.config_path)

    def update(self, i: int, shards: int) -> UpdateSpec:
        """The spec of iteration i's update, as the per-stage rule would give it."""
        run = self.run
        return UpdateSpec(self.config_path, i, str(run.policy(i)),
                          tuple(str(p) for p in run.shards(i, shards)),
                          str(run.policy(i + 1)), str(run.update_dir(i)))


def run_block(spec: BlockSpec) -> dict[str, Any]:
    """Stage `block`: submit the block job, wait through any requeues, return rank 0's
    summary."""
    result: dict[str, Any] = job_results(submit_block(spec))[0]
    return result


def submit_block(spec: BlockSpec) -> Any:
    """Check the block and its first policy and submit its job (the update's allocation,
    one task per rank); returns the submitit job."""
    from rlver import config as config_mod
    from rlver.models import verified_policy_sha256
    from rlver.personas.schema import read_personas

    cfg = config_mod.load(spec.config_path)
    if not 0 <= spec.first < spec.last <= cfg.iterations:
        raise RlverInputError(
            f"--first {spec.first} --last {spec.last}: not a block of {spec.config_path}'s "
            f"{cfg.iterations} iterations. Fix: 0 <= first < last <= iterations.")
    verified_policy_sha256(spec.run.policy(spec.first))  # a damaged policy, named here
    for personas in (spec.personas, spec.test_personas):
        read_personas(personas)  # and a missing or damaged persona set
    cl = cfg.cluster
    folder = spec.run.block_dir(spec.first)
    executor = submitit.AutoExecutor(folder=folder / "submitit", cluster=cl.launcher,
                                     slurm_max_num_timeout=cl.max_requeues)
    executor.update_parameters(**job_parameters(cfg, spec.first, stage="block"))
    cancel_earlier_job(folder)
    job = executor.submit(BlockJob(), spec)
    write_json(folder / JOB_FILE, {"job_id": job.job_id, "launcher": cl.launcher})
    print(f"block iters {spec.first}-{spec.last - 1}: submitted job {job.job_id} "
          f"({cl.launcher}); logs: {job.paths.stdout.parent}", file=sys.stderr, flush=True)
    return job


class BlockJob(submitit.helpers.Checkpointable):
    """The submitit job body, run once per rank. On preemption or timeout submitit
    requeues it as it is (`checkpoint`, inherited); the requeued job resumes from the
    files (module docstring)."""

    def __call__(self, spec: BlockSpec) -> dict[str, Any]:
        from rlver import config as config_mod

        submitit.helpers.TorchDistributedEnvironment().export(
            set_cuda_visible_devices=False, overwrite=True)
        cfg = config_mod.load(spec.config_path)
        preemption = Preemption("block", wait_s=max(1, cfg.cluster.signal_delay_s // 2))
        block = Block(spec, cfg, preemption)
        try:
            return block.run()
        finally:  # a failed block too: vLLM's engine process would outlive it
            block.close()


class Block:
    """The loop of one block on one rank (`run`), and the engines it keeps."""

    def __init__(self, spec: BlockSpec, cfg: Any,
                 preemption: Optional[Preemption] = None) -> None:
        self.spec, self.cfg, self.preemption = spec, cfg, preemption
        self.files: BlockFiles = block_files(cfg, spec.run, spec.first, spec.last)
        self.engines: Optional[T.Engines] = None
        self.reference: Any = None
        self.rollout_engine: Optional[Engine] = None
        #: The iteration whose policy the rollout engine holds.
        self.engine_policy = spec.first
        #: The iteration whose policy the DeepSpeed engine holds.
        self.trained = spec.first
        #: The newest update whose trainer state is on disk (the block's start: first-1).
        self.saved_through = spec.first - 1
        #: A mid-update checkpoint this job continues from (update/resume).
        self.resumed: Optional[S.Progress] = None
        #: With model.lora: (iteration, scratch folder) of the DeepSpeed engine's adapter
        #: written for the rollout engine and the hash of a policy that is not kept.
        self._scratch: Optional[tuple[int, tempfile.TemporaryDirectory[str]]] = None

    def run(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        spec, files = self.spec, self.files
        # Ranks wait at a barrier while another finishes its evaluation or shard: as
        # long as the job may run, not DeepSpeed's 30 minutes.
        self.rank, self.world, self.device = T.start(
            self.cfg, spec.run.block_dir(spec.first),
            timeout=timedelta(minutes=max(30, self.cfg.cluster.timeout_min)))
        done: list[int] = []
        for i in range(spec.first, spec.last):
            if len(done) == i - spec.first and files.complete(i):
                done.append(i)
        replay: list[int] = []
        following = spec.first + len(done)
        resume_dir = spec.run.update_dir(following) / "resume"
        if following < spec.last and (resume_dir / "progress.json").is_file():
            self.open_engines_at(following, self._load_resume, resume_dir)
            assert self.resumed is not None
            S.log(self.rank, f"block: iterations {done} are complete; continuing update "
                             f"{following} at step {self.resumed.next_step + 1} from "
                             f"{resume_dir}; replaying 0 update(s)")
        # With every iteration complete (a job killed before its last evaluation, say)
        # nothing needs the trained weights: kept policies are read from disk.
        elif done and len(done) < spec.last - spec.first:
            saved = self.saved_state(done)
            if saved is not None:
                self.open_engines_at(saved + 1, S.load_state, spec.run.state(saved))
            replay = [i for i in done if saved is None or i > saved]
            S.log(self.rank, f"block: iterations {done} are complete; " + (
                f"continuing from the state saved after update {saved}; " if saved is not None
                else "") + f"replaying {len(replay)} update(s) from their rollouts")
        seconds: dict[int, float] = {}
        for i in range(spec.first, spec.last):
            t = time.perf_counter()
            if i in done:
                if i in replay:
                    self.update(i, replay=True)
                    self.boundary()
                continue
            self.rollouts(i)
            self.update(i, replay=False)
            if i + 1 < spec.last or self._evaluation_missing(spec.last):
                self.boundary()  # the block's end needs no requeue
            seconds[i] = time.perf_counter() - t
            S.log(self.rank, f"block: iteration {i} done in {seconds[i]:.1f} s")
        if self._evaluation_missing(spec.last):
            self.rollouts(spec.last)  # the block's last policy: its evaluation alone
        torch.distributed.barrier()
        total = time.perf_counter() - t0
        S.log(self.rank, f"block iters {spec.first}-{spec.last - 1}: {total:.1f} s "
                         f"({len(replay)} replayed)")
        return {"first": spec.first, "last": spec.last, "replayed": replay,
                "seconds": total, "iteration_seconds": seconds}

    def saved_state(self, done: list[int]) -> Optional[int]:
        """The newest update among the complete iterations `done` whose state this block
        saved (`cluster.state_every`), or None."""
        for j in reversed(done):
            if (self.spec.run.state(j) / "trainer.json").is_file():
                return j
        return None

    def open_engines_at(self, i: int, load: Any, state_dir: Any) -> None:
        """The DeepSpeed engines for update i: opened from the block's first policy
        (policy i may be unexported) and given the weights and optimizer state saved
        after update i-1, or in update i on the preemption signal (`load(state_dir,
        actor, critic)`; PPO's critic opens from critic i-1, saved with it). Update i
        sets its own batch size."""
        spec = self.spec.update(i, self.cfg.rollout.shards)
        opened = UpdateSpec(spec.config_path, i, str(self.spec.run.policy(self.spec.first)),
                            spec.rollout_paths, spec.out_policy_dir, spec.update_dir)
        torch.manual_seed(self.cfg.seed)
        self.engines = T.open_engines(opened, self.cfg, 1, self.world, self.rank)
        load(state_dir, self.engines.actor, self.engines.critic)
        self.trained = i
        self.saved_through = i - 1

    def _load_resume(self, resume_dir: Any, actor: Any, critic: Any) -> None:
        self.resumed = S.load_resume(resume_dir, actor, critic, self.world)

    def save_state(self, i: int) -> None:
        """The trainer state after update i inside the block (`cluster.state_every`),
        where a restarted block finds it; older states are deleted by retention."""
        from rlver.io import weights_sha256

        assert self.engines is not None
        run, cfg = self.spec.run, self.cfg
        spec = self.spec.update(i, cfg.rollout.shards)
        sha = (weights_sha256(run.policy(i + 1)) if run.policy(i + 1).exists()
               else self.unexported_sha256())
        S.save_state(spec, cfg, self.engines.actor, self.engines.critic, sha, self.rank)
        if self.rank == 0:
            S.retention(spec, cfg.algorithm.keep_state_iterations)
        torch.distributed.barrier()
        self.saved_through = i
        S.log(self.rank, f"block: saved the state after update {i} in {run.state(i)}")

    def boundary(self) -> None:
        """A stage's end, where the block can checkpoint: on the preemption signal (any
        rank's), save the state after the newest update unless it is on disk, and
        requeue the job (rank 0 through submitit; module docstring)."""
        if self.preemption is None or not T.any_rank(self.preemption.requested):
            return
        self.preemption.disarm()
        if self.engines is not None and self.trained - 1 > self.saved_through:
            self.save_state(self.trained - 1)
        S.log(self.rank, "block: preempted; the state after update "
                         f"{self.saved_through} is on disk; requeueing")
        self.preemption.requeue(self.rank)

    def _evaluation_missing(self, i: int) -> bool:
        """Whether policy i is evaluated in this block and its files are not all there."""
        return i in self.files.evals and not all(p.exists() for p in self.files.evals[i])

    # --- the rollout engine, given each new policy in memory

    def engine_for(self, i: int) -> Engine:
        """The rollout engine holding iteration i's policy (the DeepSpeed engine's now),
        started as the stage's own job starts it (`make_engine`, rollout.vllm_args), with
        the prefix cache empty as a fresh engine's: per stage, every shard and evaluation
        starts its own engine (docs/update.md, "Resident blocks")."""
        from rlver.engines import make_engine

        ro, run = self.cfg.rollout, self.spec.run
        if self.rollout_engine is None:
            # A kept policy from its folder; the first policy of the block always is.
            self.engine_policy = i if run.policy(i).exists() else self.spec.first
            self.rollout_engine = make_engine(ro.engine, str(run.policy(self.engine_policy)),
                                              self.cfg.model.dtype, dict(ro.vllm_args),
                                              ro.max_model_len, lora=self.cfg.model.lora)
        if self.engine_policy != i:
            assert self.engines is not None and self.trained == i
            if self.cfg.model.lora is not None:
                self.rollout_engine.load_adapter(str(self.adapter(i)))
            else:
                self.rollout_engine.load_weights(
                    self.engines.actor.module.lm.named_parameters())
            self.engine_policy = i
        self.rollout_engine.reset_prefix_cache()
        return self.rollout_engine

    def adapter(self, i: int) -> Path:
        """With model.lora: the folder of policy i, the DeepSpeed engine's (`self.trained`):
        its kept policy, or its adapter written once to memory-backed scratch (as its
        export would be, base record included), for the rollout engine and its hash."""
        from rlver import lora

        run = self.spec.run
        if run.policy(i).exists():
            return run.policy(i)
        assert self.engines is not None and self.trained == i
        if self._scratch is None or self._scratch[0] != i:
            self._drop_scratch()
            tmp = tempfile.TemporaryDirectory(dir=scratch_dir())
            self._scratch = (i, tmp)
            lora.write_adapter(self.engines.actor.module.peft, Path(tmp.name) / "policy",
                               run.reference_policy, run.policy(i))
        return Path(self._scratch[1].name) / "policy"

    def _drop_scratch(self) -> None:
        if self._scratch is not None:
            self._scratch[1].cleanup()
            self._scratch = None

    def close(self) -> None:
        """Close the rollout engine (its workers, vLLM's engine process) and delete the
        scratch adapter."""
        self._drop_scratch()
        if self.rollout_engine is not None:
            engine, self.rollout_engine = self.rollout_engine, None
            engine.close()

    def rollouts(self, i: int) -> None:
        """What iteration i's policy generates and is missing: its evaluation when the
        iteration is evaluated (item None) and its rollout shards (items 0, 1, ...,
        none at the block's end), in rounds of one item per rank (rank r takes the r-th
        of each round; per stage these are separate jobs that run side by side), a
        boundary after each round."""
        run, shards = self.spec.run, self.cfg.rollout.shards
        items: list[Optional[int]] = []
        if self._evaluation_missing(i):
            items.append(None)
        if i < self.spec.last:
            items += [s for s in range(shards) if not run.shard(i, s).exists()]
        torch.distributed.barrier()  # every rank has listed them before any is written
        sha = None
        if any(s is not None for s in items) and not run.policy(i).exists():
            sha = self.unexported_sha256()
        for start in range(0, len(items), self.world):
            round_ = items[start:start + self.world]
            if self.rank < len(round_):
                self.generate(i, round_[self.rank], sha)
            torch.distributed.barrier()
            if i < self.spec.last:
                self.boundary()

    def generate(self, i: int, shard: Optional[int], sha: Optional[str]) -> None:
        """Iteration i's evaluation (`shard` None; its policy is kept, so on disk) or
        rollout shard, with the threads of the stage's own job."""
        from rlver.evaluate import evaluate_policy
        from rlver.rollout import rollout_shard

        run, spec = self.spec.run, self.spec
        if shard is None:
            with stage_threads(self.cfg.cluster.evaluate.cpus):
                evaluate_policy(spec.config_path, i, str(run.policy(i)), spec.test_personas,
                                str(run.eval_dir(i)), engine=self.engine_for(i))
        else:
            with stage_threads(self.cfg.cluster.rollout.cpus):
                rollout_shard(spec.config_path, i, shard, str(run.policy(i)), spec.personas,
                              str(run.shard(i, shard)), engine=self.engine_for(i),
                              policy_sha256=sha)

    def unexported_sha256(self) -> Optional[str]:
        """The sha256 the DeepSpeed engine's policy would have as an export (rank 0 writes
        it to scratch, hashes it and deletes it), on every rank."""
        from rlver.io import weights_sha256

        assert self.engines is not None
        state = S.full_state(self.engines.actor, self.cfg.algorithm.zero_stage)
        box: list[Optional[str]] = [None]
        if self.rank == 0 and self.cfg.model.lora is not None:
            box[0] = weights_sha256(self.adapter(self.trained))
        elif self.rank == 0:
            assert state is not None
            lm_state = {k.removeprefix("lm."): v for k, v in state.items()}
            with tempfile.TemporaryDirectory(dir=scratch_dir()) as tmp:
                self.engines.actor.module.lm.save_pretrained(
                    tmp, state_dict=lm_state, safe_serialization=True)
                box[0] = weights_sha256(tmp)
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    # --- the update, as train() runs it, on the engines kept from the last one

    def update(self, i: int, replay: bool) -> None:
        """Update i: the optimizer steps on its rollouts; unless `replay`, its export
        (kept policies; the state at the block's end) and metrics."""
        cfg, rank, world = self.cfg, self.rank, self.world
        t0 = time.perf_counter()
        spec = self.spec.update(i, cfg.rollout.shards)
        torch.manual_seed(cfg.seed)
        torch.set_num_threads(max(1, cfg.cluster.cpus_per_task))
        T.flush_subnormals()
        batch = T.read_batch(spec, cfg, rank, world)
        if self.engines is None:
            self.engines = T.open_engines(spec, cfg, batch.grad_accum, world, rank)
            carried = S.load_carried(spec, self.engines.actor, self.engines.critic, rank)
        else:
            carried = True
            for engine in (self.engines.actor, self.engines.critic):
                if engine is not None:
                    engine.set_train_batch_size(batch.grad_accum * world)
        progress, self.resumed = self.resumed or S.Progress(), None
        if progress.next_step:  # continuing from a checkpoint taken on the signal
            terms = S.resume_terms(Path(spec.update_dir) / "resume")
            carried = progress.carried
        else:
            if cfg.algorithm.kl_coef > 0 and self.reference is None:
                from rlver.train.engines import reference_model

                self.reference = reference_model(spec.reference_dir, cfg.model.lora,
                                                 self.engines.actor, self.device)
            terms = T.batch_terms(batch, cfg, self.engines, self.reference, rank, world,
                                  self.device)
        # A replayed update is not checkpointed mid-way: the signal waits for its end.
        t_train = T.optimize(spec, cfg, self.engines, batch, terms, progress, carried, rank,
                             world, self.device, None if replay else self.preemption, t0)
        self.trained = i + 1
        if replay:
            return
        last = i + 1 == self.spec.last
        export: T.Export = ("all" if last else
                            "policy" if i + 1 in self.files.policies else "none")
        T.finish(spec, cfg, self.engines, batch, terms, progress, rank, world, t0, t_train,
                 export)
        if last:
            self.saved_through = i
        every = cfg.cluster.state_every
        if not last and every > 0 and (i + 1 - self.spec.first) % every == 0:
            self.save_state(i)


@contextmanager
def stage_threads(n: int) -> Iterator[None]:
    """Threads and float mode of a rollout or evaluation in the block's process: `n`
    threads (as the stage's own job) and subnormals kept (the update flushes them, a
    rollout job does not); the update's flushing is restored afterwards."""
    torch.set_num_threads(max(1, n))
    torch.set_flush_denormal(False)
    try:
        yield
    finally:
        T.flush_subnormals()


def scratch_dir() -> Optional[str]:
    """Memory-backed scratch for hashing an unkept policy, where there is one."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None

