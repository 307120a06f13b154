"""Preemption: submitit's signal (Slurm's preemption, or `cluster.signal_delay_s` before
the time limit) deferred to the next boundary where a job can checkpoint."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any, Optional

import submitit


class Preemption:
    """Defers submitit's preemption/timeout handler to the next boundary where the job
    can checkpoint (an optimizer step's end; in a block, also a stage's end).

    The signal only sets a flag; the job checks it (on all ranks at once) at each
    boundary, saves a DeepSpeed checkpoint together, and then hands over to submitit's
    own handler, which calls the job's `checkpoint`, requeues the job and exits. A
    DeepSpeed checkpoint is collective, so it cannot be written from inside the handler.

    `wait_s`: when no boundary comes within this many seconds of the signal (a block in
    a long evaluation, say), hand over to submitit anyway, without a checkpoint: the
    requeued job then resumes from the files, and Slurm's kill at the end of
    `cluster.signal_delay_s` would not requeue it at all. None: wait for the boundary.
    """

    def __init__(self, stage: str = "update", wait_s: Optional[int] = None) -> None:
        self.signum = submitit.JobEnvironment._usr_sig()
        self.stage, self.wait_s = stage, wait_s
        self.requested = False
        self._submitit_handler = signal.getsignal(self.signum)
        signal.signal(self.signum, self._note)

    def _note(self, signum: int, frame: Any) -> None:
        self.requested = True
        wait = (f" (at most {self.wait_s} s, then without one)" if self.wait_s else "")
        print(f"{self.stage}: caught signal {signal.Signals(signum).name}; checkpointing at "
              f"the next boundary{wait}", file=sys.stderr, flush=True)
        if self.wait_s:
            signal.signal(signal.SIGALRM, self._give_up)
            signal.alarm(self.wait_s)

    def _give_up(self, signum: int, frame: Any) -> None:
        print(f"{self.stage}: no checkpoint boundary within {self.wait_s} s of the signal; "
              "requeueing without a checkpoint", file=sys.stderr, flush=True)
        self.requeue(int(os.environ.get("RANK", "0")))

    def disarm(self) -> None:
        """At a boundary, before the checkpoint: the wait is over."""
        signal.alarm(0)

    def requeue(self, rank: int) -> None:
        """Hand over to submitit on rank 0 (requeue and exit); the other ranks just exit."""
        self.disarm()
        if rank == 0 and callable(self._submitit_handler):
            self._submitit_handler(self.signum, None)
            raise RuntimeError(f"{self.stage}: submitit's handler did not requeue the job")
        sys.exit(0)
