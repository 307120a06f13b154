"""The served simulated user's files in results/<run>/simulator/, and how each is written
and read: the supervisor writes the key, the lease and endpoint.json; each server job its
replica file; the clients and `rlver status` read them.

- `api_key`: the run's API key, made once, mode 0600. Servers get it in their environment
  (VLLM_API_KEY), clients send it as a bearer token; it is never in a log, a config, a
  command line, a job script or endpoint.json.
- `lease.json`: {owner, renewed, lease_s}, renewed by the supervisor every lease_s / 4. A
  server whose lease is gone or older than lease_s stops by itself.
- `replicas/replica_<r>.json`: a server job's address once its server answers: url, job
  id, node, started, ready.
- `endpoint.json`: the supervisor's view for the clients: `state` (starting, ready,
  failed, stopped), the served model name, the serve hash, the restarts, and per replica
  its url (None until it answers), job, node, log, state and since when it answers.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any, Optional

from rlver import layout
from rlver.errors import RlverInputError
from rlver.io import write_json

#: endpoint.json's states.
STARTING, READY, FAILED, STOPPED = "starting", "ready", "failed", "stopped"


class Files:
    """The paths of one run's served simulator."""

    def __init__(self, run: layout.Run) -> None:
        self.run = run
        self.root = run.simulator

    @property
    def endpoint(self) -> Path:
        return self.root / "endpoint.json"

    @property
    def key(self) -> Path:
        return self.root / "api_key"

    @property
    def lease(self) -> Path:
        return self.root / "lease.json"

    def replica(self, r: int) -> Path:
        return self.root / "replicas" / f"replica_{r}.json"

    @property
    def submitit(self) -> Path:
        """Slurm server jobs: submitit's scripts and logs (`<job>_0_log.{out,err}`)."""
        return self.root / "submitit"

    @property
    def local(self) -> Path:
        """Local server processes: one log per start."""
        return self.root / "local"

    @property
    def log(self) -> Path:
        """The supervisor's log: starts, restarts, stops."""
        return self.run.log("simulator")


def ensure_key(path: Path) -> None:
    """Make the run's API key once: 32 random bytes, urlsafe, in a file only its owner can
    read (created with mode 0600, never widened). An existing key is kept, its mode
    narrowed to 0600 if needed."""
    if path.exists():
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_key(path: Path) -> str:
    """The run's API key; a missing or empty file is refused naming how to get one."""
    try:
        key = path.read_text().strip()
    except OSError as exc:
        raise RlverInputError(
            f"{path}: the served simulator's API key is not readable ({exc.strerror}). "
            "Fix: start the run with snakemake (its supervisor makes the key and the server), "
            "or `rlver serve-simulator --config results/<run>/config.yaml` for a stage run "
            "by hand."
        ) from exc
    if not key:
        raise RlverInputError(f"{path}: empty API key. Fix: delete the file; the next "
                              "snakemake (or rlver serve-simulator) makes a new one.")
    return key


def serve_hash(sim: Any) -> str:
    """What decides what a server answers: the model, its served name, its GPUs and vLLM
    flags. A server started under another hash is not reused."""
    serve = sim.serve
    what = {"model": sim.model, "model_path": serve.model_path, "gpus": serve.gpus,
            "tensor_parallel": serve.tensor_parallel, "vllm_args": dict(serve.vllm_args)}
    blob = json.dumps(what, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_json(path: Path) -> Optional[dict[str, Any]]:
    """A JSON object, or None if the file is missing or not (yet) one."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def write_lease(path: Path, owner: str, lease_s: float) -> None:
    write_json(path, {"owner": owner, "renewed": time.time(), "lease_s": lease_s})


def lease_age(path: Path, now: Optional[float] = None) -> Optional[float]:
    """Seconds since the lease was renewed; None if there is no lease."""
    lease = read_json(path)
    if lease is None or not isinstance(lease.get("renewed"), (int, float)):
        return None
    return (time.time() if now is None else now) - float(lease["renewed"])


def iso(t: Optional[float]) -> Optional[str]:
    """A Unix time as local ISO time to the second (None stays None)."""
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))
