"""The trainer's state on disk: the policy export, the optimizer state carried from one
update to the next, the checkpoint of a preempted job, and retention.

For update i (`iter_i/update/`): the optimizer state of update i-1 is read from
`iter_{i-1}/update/state` (DeepSpeed checkpoints; PPO also `critic/`, safetensors) when it
belongs to this policy and layout (with model.lora, both hold the trained parameters
only: the adapters and the value head); the update writes `iter_{i+1}/policy`, and, unless it
is the run's last, its own state for update i+1. State of iterations <= i -
`algorithm.keep_state_iterations` is deleted. Every folder is written under a temporary
name and renamed when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from rlver import faults
from rlver.errors import RlverInputError
from rlver.train.batch import Terms
from rlver.train.spec import UpdateSpec


def log(rank: int, text: str) -> None:
    """A progress line on stderr, from rank 0 only."""
    if rank == 0:
        print(text, file=sys.stderr, flush=True)


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

    @property
    def carried(self) -> bool:
        """Whether the update began on the previous update's optimizer state."""
        return bool(self.steps and self.steps[0].get("carried_state"))


def resume_terms(resume_dir: Path) -> Terms:
    """The rollout terms a `save_resume` checkpoint holds."""
    terms: Terms = torch.load(resume_dir / "terms.pt", weights_only=True)
    return terms


def full_state(engine: Any, zero_stage: int) -> Optional[dict[str, torch.Tensor]]:
    """The full weights on rank 0 (None elsewhere under ZeRO-3); under ZeRO-3 every rank
    must join the gather."""
    if zero_stage == 3:
        return engine._zero3_consolidated_16bit_state_dict()
    return engine.module.state_dict()


def state_hash(state: Optional[dict[str, torch.Tensor]]) -> Optional[str]:
    if state is None:
        return None
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def export(spec: UpdateSpec, cfg: Any, actor: Any, critic: Any, tokenizer: Any,
            rank: int) -> Optional[str]:
    """Write iter_{i+1}/policy, and the state for update i+1 unless this was the run's
    last update or retention keeps none; returns this rank's hash of its weights (several
    ranks only)."""
    policy_sha, weights_hash = export_policy(spec, cfg, actor, tokenizer, rank)
    if spec.iteration + 1 >= cfg.iterations or cfg.algorithm.keep_state_iterations == 0:
        return weights_hash
    save_state(spec, cfg, actor, critic, policy_sha, rank)
    return weights_hash


def export_policy(spec: UpdateSpec, cfg: Any, actor: Any, tokenizer: Any, rank: int,
                  out_dir: Optional[Path] = None) -> tuple[Optional[str], Optional[str]]:
    """Write the policy to `out_dir` (default iter_{i+1}/policy; rank 0 writes); returns
    its weights' sha256 (rank 0; None elsewhere) and this rank's hash of its weights
    (several ranks only)."""
    from rlver.models import save_policy
    from rlver.train import adapters

    state = full_state(actor, cfg.algorithm.zero_stage)
    lm_state = None if state is None else {k.removeprefix("lm."): v for k, v in state.items()}
    policy_sha = None
    if rank == 0 and cfg.model.lora is not None:
        policy_sha = adapters.save_policy(actor, out_dir or spec.out_policy_dir,
                                          spec.reference_dir, spec.iteration)
    elif rank == 0:
        policy_sha = save_policy(actor.module.lm, tokenizer, out_dir or spec.out_policy_dir,
                                 spec.iteration, state_dict=lm_state)
    # Ranks hold replicas of the weights (ZeRO 0-2): their hashes show they agree.
    weights_hash = state_hash(state) if torch.distributed.get_world_size() > 1 else None
    return policy_sha, weights_hash


def save_state(spec: UpdateSpec, cfg: Any, actor: Any, critic: Any,
               policy_sha: Optional[str], rank: int) -> None:
    """All ranks: the optimizer state (and PPO's critic) for update i+1, in
    iter_i/update/state (and critic/), with trainer.json naming the policy it belongs to."""
    from rlver.io import atomic_path
    from rlver.train.critic import save_critic

    alg = cfg.algorithm
    update_dir = Path(spec.update_dir)
    partial = update_dir / ".state.partial"
    _save_engines(partial, actor, critic, "state", rank)
    if critic is not None:
        critic_state = full_state(critic, alg.zero_stage)
        if rank == 0:
            with atomic_path(update_dir / "critic") as tmp:
                save_critic(critic_state, critic.module, tmp,  # type: ignore[arg-type]
                            final=update_dir / "critic")
    torch.distributed.barrier()
    if rank == 0:
        info = {"iteration": spec.iteration, "world_size": torch.distributed.get_world_size(),
                "zero_stage": alg.zero_stage, "precision": alg.precision,
                "policy_sha256": policy_sha}
        (partial / "trainer.json").write_text(json.dumps(info, indent=2) + "\n")
        _replace_dir(partial, update_dir / "state")


def _save_engines(partial: Path, actor: Any, critic: Any, tag: str, rank: int) -> None:
    """All ranks: DeepSpeed checkpoints of the engines into a fresh `partial` folder (then
    renamed over the real one by `_replace_dir`, so a kill mid-way leaves the old one).
    Frozen parameters (a LoRA model's base) are left out: they come from the base."""
    from rlver.train.adapters import frozen

    if rank == 0:
        shutil.rmtree(partial, ignore_errors=True)
    torch.distributed.barrier()
    actor.save_checkpoint(str(partial / "actor"), tag=tag,
                          exclude_frozen_parameters=frozen(actor))
    faults.point("update.save_state")
    if critic is not None:
        critic.save_checkpoint(str(partial / "critic"), tag=tag,
                               exclude_frozen_parameters=frozen(critic))


def _replace_dir(partial: Path, final: Path) -> None:
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)


def load_carried(spec: UpdateSpec, actor: Any, critic: Any, rank: int) -> bool:
    """Restore the optimizer state of update i-1 if it matches this policy and layout."""
    from rlver.io import weights_sha256

    why = ["this is iteration 0"]
    prev = None if spec.iteration == 0 else spec.run.state(spec.iteration - 1)
    if prev is not None:
        info_path = prev / "trainer.json"
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
        log(rank, f"update iter {spec.iteration}: fresh optimizer state: {'; '.join(why)}")
        return False
    assert prev is not None
    load_state(prev, actor, critic)
    log(rank, f"update iter {spec.iteration}: continuing the optimizer state of {prev.parent}")
    return True


def load_state(state_dir: Path, actor: Any, critic: Any) -> None:
    """All ranks: the engines' weights and optimizer state from a `save_state` folder."""
    actor.load_checkpoint(str(state_dir / "actor"), tag="state")
    if critic is not None:
        critic.load_checkpoint(str(state_dir / "critic"), tag="state")


def save_resume(resume_dir: Path, actor: Any, critic: Any, terms: Terms, progress: Progress,
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
        log(rank, f"update: saved {resume_dir} at step {progress.next_step}; requeueing")
    torch.distributed.barrier()


def load_resume(resume_dir: Path, actor: Any, critic: Any, world: int) -> Optional[Progress]:
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


def retention(spec: UpdateSpec, keep: int) -> None:
    """Delete the trainer state of iterations <= i - keep (only the newest are needed),
    and any half-written one a kill left there."""
    for j in range(spec.iteration - keep + 1):
        partial = spec.run.update_dir(j) / ".state.partial"
        for old in (spec.run.state(j), spec.run.critic(j), partial):
            if old.exists():
                shutil.rmtree(old)
                print(f"update iter {spec.iteration}: deleted {old} (retention: "
                      f"keep_state_iterations={keep})", file=sys.stderr, flush=True)
