"""Whether every rank of a job sees the files of its folder: the update's (and a block's)
folders must be on storage all nodes of the job mount, or the ranks would write their
parts of a DeepSpeed checkpoint, and read the submitit and carried-state files, in
different places.

Rank 0 writes a marker with a token of this job into the folder; every rank reads it
back; all ranks learn which did not see it (a collective), and all fail with one message
naming the folder, so no rank is left waiting in a later collective.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import torch

from rlver.errors import RlverInputError
from rlver.io import write_text

MARKER = ".shared-storage-check"
#: How long a rank looks for the marker: a network file system may show a new file to
#: other nodes a little later (attribute caching), never minutes later.
WAIT_S = 10.0


def check_shared_folder(folder: Path, rank: int, world: int) -> None:
    """Every rank sees what rank 0 writes in `folder`; one message on every rank if not
    (a collective: every rank calls it, with its own view of the folder's path)."""
    if world == 1:
        return
    token = [f"{os.environ.get('SLURM_JOB_ID', 'local')}-{os.getpid()}-{time.time_ns()}"]
    torch.distributed.broadcast_object_list(token, src=0)
    marker = folder / MARKER
    if rank == 0:
        write_text(marker, token[0])
    torch.distributed.barrier()
    deadline = time.monotonic() + WAIT_S
    seen = _reads(marker, token[0])
    while not seen and time.monotonic() < deadline:
        time.sleep(0.5)
        seen = _reads(marker, token[0])
    views: list[Any] = [None] * world
    torch.distributed.all_gather_object(views, (seen, socket.gethostname()))
    if rank == 0:
        marker.unlink(missing_ok=True)
    blind = [(r, host) for r, (ok, host) in enumerate(views) if not ok]
    if blind:
        who = ", ".join(f"rank {r} on {host}" for r, host in blind)
        raise RlverInputError(
            f"{folder}: {who} do(es) not see the files rank 0 on {views[0][1]} writes there "
            "(node-local storage, such as /tmp or /dev/shm, under the same path): every "
            "rank writes its part of the job's checkpoints there. Fix: put the run on a "
            "file system every node mounts (snakemake --config results_dir=/shared/path, "
            "docs/cluster.md), then rerun.")


def _reads(marker: Path, token: str) -> bool:
    try:
        return marker.read_text() == token
    except OSError:
        return False
