"""The update stage: one policy update (GRPO, or PPO with a critic) over an iteration's
rollouts, on DeepSpeed, submitted through submitit.

Read in this order:

- `spec` (`UpdateSpec`: the files of one update) and `launch`, the stage (`run_update`):
  checks its inputs, submits `UpdateJob` through submitit (local executor or Slurm,
  `cluster.*`), waits, surfaces the log on failure; `preemption`: the signal deferred to
  the next optimizer step's end, then the requeue.
- `trainer`: the job's loop, top to bottom: rollout terms, advantages, epochs x
  mini-batches of optimizer steps, losses, metrics, export.
- `advantages`, `losses`: the estimators and losses the config names (`rlver.registry`),
  built from the tested formulas of `rlver.algorithms`.
- `plan` (which rows each optimizer step and micro-batch takes, on each rank), `batch`
  (collation, the rollout-time terms), `engines` (the model wrapper, DeepSpeed set-up),
  `critic` (PPO's value model), `state` (carried optimizer state, resume, export,
  retention), `metrics` (the update's summary and health numbers), `orphans` (stopping a
  job an earlier, killed submission left running).
"""

from rlver.train.launch import run_update, submit_update
from rlver.train.spec import UpdateSpec

__all__ = ["UpdateSpec", "run_update", "submit_update"]
