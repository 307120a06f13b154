"""The supervisor of the served simulated user: it keeps `simulator.serve.replicas` vLLM
servers of the run up while the run needs them.

It lives in the process that runs the workflow (the Snakefile's `onstart` starts it in a
daemon thread, `onsuccess`/`onerror` stop it) or in `rlver serve-simulator`. It makes the
run's API key, renews the lease the servers check, submits one job per replica (Slurm
through submitit, or a local process: `cluster.launcher`), writes endpoint.json when a
server answers, and every few seconds looks at each job and its server:

- a job that ended (scancel, preemption, time limit, a lost node, a crash) or a server
  that stopped answering is replaced by a new job (a restart, in endpoint.json and the
  log); a job that never answers is cancelled after `start_timeout_min`, and after
  `start_attempts` failed starts in a row the supervisor gives up: endpoint.json says
  `failed`, naming the last job's log, and the clients fail with that message;
- at the start it reuses the servers of a supervisor that is gone (a Snakemake killed,
  restarted within the lease) if they run the same serve config and answer;
- at the end it cancels every job and waits until they are gone.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from rlver import layout
from rlver.errors import RlverInputError
from rlver.io import write_json
from rlver.served import files as sf
from rlver.served.replica import ReplicaSpec, answers, serve, spec_json

#: Seconds between two looks at the jobs.
POLL_S = 3.0
#: A server that answered before and has not answered for this long is replaced.
LOST_AFTER_S = 20.0
#: Slurm states of a job that may still serve.
ALIVE = {"PENDING", "CONFIGURING", "RUNNING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
         "REQUEUE_FED", "RESIZING", "SIGNALING"}
#: The newest restarts kept in endpoint.json.
EVENTS_KEPT = 20


@dataclass
class Slot:
    """One replica: the job serving it now."""

    replica: int
    job_id: str = ""
    log: str = ""
    node: str = ""
    url: Optional[str] = None
    #: pending (queued), starting (running, not answering yet), ready, or the job's end.
    state: str = "none"
    submitted: float = 0.0
    #: When the job was first seen running (its start timeout counts from here).
    running_since: Optional[float] = None
    started: Optional[float] = None
    ready_since: Optional[float] = None
    unhealthy_since: Optional[float] = None
    start_failures: int = 0
    restarts: int = 0
    proc: Optional[subprocess.Popen[bytes]] = None

    def entry(self) -> dict[str, Any]:
        return {"replica": self.replica, "job_id": self.job_id, "node": self.node,
                "url": self.url if self.state == "ready" else None, "log": self.log,
                "state": self.state, "submitted": self.submitted, "started": self.started,
                "ready_since": self.ready_since, "restarts": self.restarts}


class Supervisor:
    """Keeps the run's served simulator up: `start()`, then `stop(reason)` at the end.

    `cfg`: the run's config (simulator.backend=served); `run_dir`: results/<run>.
    `command`: a server command instead of vLLM's (tests; see ReplicaSpec)."""

    def __init__(self, cfg: Any, run_dir: str | os.PathLike[str], *,
                 command: tuple[str, ...] = (), poll_s: float = POLL_S) -> None:
        self.cfg, self.sim, self.serve = cfg, cfg.simulator, cfg.simulator.serve
        self.files = sf.Files(layout.Run(Path(run_dir).resolve()))
        self.launcher = cfg.cluster.launcher
        self.command, self.poll_s = command, poll_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.hash = sf.serve_hash(self.sim)
        self.slots = [Slot(r) for r in range(self.serve.replicas)]
        self.state, self.error = sf.STARTING, ""
        self.restarts = 0
        self.events: list[dict[str, Any]] = []
        self._key = ""
        self._lock = threading.RLock()
        self._quit = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._executor: Any = None
        self._stopped = False

    # --- life cycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Make the key and the lease, reuse or submit the servers, and start watching."""
        self.files.root.mkdir(parents=True, exist_ok=True)
        self._check_other_owner()
        sf.ensure_key(self.files.key)
        self._key = sf.read_key(self.files.key)
        sf.write_lease(self.files.lease, self.owner, self.serve.lease_s)
        self._renewed = time.time()
        with self._lock:
            self._adopt()
            for slot in self.slots:
                if not slot.job_id:
                    self._submit(slot)
            self._write()
        self._thread = threading.Thread(target=self._loop, name="rlver-served", daemon=True)
        self._thread.start()

    def stop(self, reason: str) -> None:
        """Cancel every server job, wait until they are gone, remove the lease. Safe to
        call twice."""
        if self._stopped:
            return
        self._stopped = True
        self._quit.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=60)
        with self._lock:
            for slot in self.slots:
                self._cancel(slot)
            self._wait_gone(self.slots)
            self.files.lease.unlink(missing_ok=True)
            self.state = sf.STOPPED if self.state != sf.FAILED else sf.FAILED
            for slot in self.slots:
                slot.state = "stopped"
            self._write()
        jobs = ", ".join(s.job_id for s in self.slots if s.job_id) or "none"
        self._say(f"stopped ({reason}); jobs {jobs}; {self.restarts} restarts in all")

    def wait(self) -> None:
        """Block until stopped (rlver serve-simulator)."""
        while not self._quit.wait(1.0):
            pass

    def _loop(self) -> None:
        while not self._quit.wait(self.poll_s):
            try:
                self.tick()
            except Exception as exc:  # a supervisor bug must not end the watch
                self._say(f"error while watching the servers: {type(exc).__name__}: {exc}")

    def tick(self) -> None:
        """One look at the lease, every job and every server."""
        with self._lock:
            if self._quit.is_set():
                return
            if time.time() - self._renewed > self.serve.lease_s / 4:
                sf.write_lease(self.files.lease, self.owner, self.serve.lease_s)
                self._renewed = time.time()
            before = [s.entry() for s in self.slots], self.state
            if self.state != sf.FAILED:
                for slot in self.slots:
                    self._check(slot)
                    if self.state == sf.FAILED:
                        break
                ready = any(s.state == "ready" for s in self.slots)
                if self.state != sf.FAILED:
                    self.state = sf.READY if ready else sf.STARTING
            if ([s.entry() for s in self.slots], self.state) != before:
                self._write()

    # --- one replica --------------------------------------------------------------------

    def _check(self, slot: Slot) -> None:
        if not slot.job_id:
            self._submit(slot)
            return
        alive, detail = self._job_state(slot)
        if not alive:
            self._ended(slot, f"job {slot.job_id} ended ({detail})")
            return
        now = time.time()
        if slot.state == "ready":
            if answers(str(slot.url), self._key):
                slot.unhealthy_since = None
                return
            slot.unhealthy_since = slot.unhealthy_since or now
            if now - slot.unhealthy_since > LOST_AFTER_S:
                self._cancel(slot)
                self._restart(slot, f"the server of job {slot.job_id} on {slot.node} has not "
                              f"answered for {now - slot.unhealthy_since:.0f} s")
            return
        info = sf.read_json(self.files.replica(slot.replica))
        if info and str(info.get("job_id")) == slot.job_id and answers(info["url"], self._key):
            slot.url, slot.node = info["url"], info.get("node", slot.node)
            slot.started, slot.ready_since = info.get("started"), now
            slot.state, slot.start_failures = "ready", 0
            self._say(f"replica {slot.replica}: job {slot.job_id} on {slot.node} serves at "
                      f"{slot.url} ({now - slot.submitted:.0f} s after its submission)")
            return
        if slot.running_since and now - slot.running_since > self.serve.start_timeout_min * 60:
            self._cancel(slot)
            self._ended(slot, f"job {slot.job_id} did not answer within "
                        f"{self.serve.start_timeout_min} min of its start")

    def _ended(self, slot: Slot, why: str) -> None:
        """A job that ended without being asked to: restart it, or give up after too many
        failed starts."""
        if slot.state != "ready":
            slot.start_failures += 1
            if slot.start_failures >= self.serve.start_attempts:
                self._fail(slot, why)
                return
        self._restart(slot, why)

    def _restart(self, slot: Slot, why: str) -> None:
        self.restarts += 1
        slot.restarts += 1
        self.events = [*self.events, {"time": time.time(), "replica": slot.replica,
                                      "job_id": slot.job_id, "node": slot.node,
                                      "why": why}][-EVENTS_KEPT:]
        self._say(f"replica {slot.replica}: {why}; restarting it (restart {self.restarts}; "
                  f"log of the lost job: {slot.log})")
        self._submit(slot)

    def _fail(self, slot: Slot, why: str) -> None:
        self.state = sf.FAILED
        self.error = (
            f"the served simulated user did not start: replica {slot.replica} failed "
            f"{slot.start_failures} starts in a row; the last: {why}"
            + (f"; its log: {slot.log}. " if slot.log else ". ")
            + "Fix: correct the cause (a wrong simulator.serve.model_path, too little GPU "
            "memory for simulator.serve.gpus, a vLLM flag in simulator.serve.vllm_args, a "
            "partition or account Slurm refuses), then rerun snakemake."
        )
        slot.state = "failed"
        self._say(self.error)
        for other in self.slots:
            self._cancel(other)

    # --- jobs ---------------------------------------------------------------------------

    def _spec(self, slot: Slot) -> ReplicaSpec:
        return ReplicaSpec(
            run_dir=str(self.files.run.root), replica=slot.replica,
            model_path=self.serve.model_path, served_name=self.sim.model,
            tensor_parallel=self.serve.tensor_parallel,
            vllm_args=dict(self.serve.vllm_args),
            host="0.0.0.0" if self.launcher == "slurm" else "127.0.0.1",
            start_timeout_s=self.serve.start_timeout_min * 60.0,
            lease_s=float(self.serve.lease_s), command=self.command)

    def _submit(self, slot: Slot) -> None:
        self.files.replica(slot.replica).unlink(missing_ok=True)
        spec = self._spec(slot)
        slot.url, slot.node, slot.started, slot.ready_since = None, "", None, None
        slot.unhealthy_since, slot.running_since, slot.proc = None, None, None
        slot.submitted = time.time()
        if self.launcher == "slurm":
            try:
                job = self._slurm().submit(serve, spec)
            except Exception as exc:  # sbatch refused it: a bad partition, account, size
                slot.job_id, slot.state = "", "not submitted"
                slot.start_failures += 1
                why = f"sbatch refused the server job: {' '.join(str(exc).split())[:400]}"
                if slot.start_failures >= self.serve.start_attempts:
                    self._fail(slot, why)
                else:
                    self._say(f"replica {slot.replica}: {why}; trying again")
                return
            slot.job_id, slot.log, slot.state = str(job.job_id), str(job.paths.stderr), "pending"
        else:
            self.files.local.mkdir(parents=True, exist_ok=True)
            log = self.files.local / f"replica_{slot.replica}_{time.strftime('%Y%m%d-%H%M%S')}.log"
            with open(log, "ab") as out:
                slot.proc = subprocess.Popen(
                    [sys.executable, "-m", "rlver.served.replica", spec_json(spec)],
                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            slot.job_id, slot.log, slot.state = f"local-{slot.proc.pid}", str(log), "starting"
            slot.running_since, slot.node = time.time(), socket.gethostname()
        self._say(f"replica {slot.replica}: submitted job {slot.job_id} ({self.launcher}); "
                  f"log: {slot.log}")

    def _slurm(self) -> Any:
        if self._executor is None:
            import submitit

            serve_cfg, cl = self.serve, self.cfg.cluster
            self._executor = submitit.AutoExecutor(folder=self.files.submitit, cluster="slurm")
            params: dict[str, Any] = {
                "name": f"rlver-simulator-{self.cfg.run}", "timeout_min": serve_cfg.timeout_min,
                "nodes": 1, "tasks_per_node": 1, "cpus_per_task": serve_cfg.cpus,
                "gpus_per_node": serve_cfg.gpus,
                "slurm_partition": serve_cfg.partition or cl.partition or None,
                "slurm_account": serve_cfg.account or cl.account or None,
                "slurm_qos": serve_cfg.qos or cl.qos or None,
                # The supervisor restarts a lost server itself: Slurm must not requeue it
                # as well (two servers for one replica).
                "slurm_additional_parameters": {"no_requeue": True},
            }
            if serve_cfg.mem_gb:
                params["mem_gb"] = serve_cfg.mem_gb
            self._executor.update_parameters(**{k: v for k, v in params.items()
                                                if v is not None})
        return self._executor

    def _job_state(self, slot: Slot) -> tuple[bool, str]:
        """(may it still serve, what Slurm or the process says)."""
        if slot.job_id.startswith("local-"):
            if slot.proc is not None:
                code = slot.proc.poll()
                return code is None, "running" if code is None else f"exit status {code}"
            alive = _is_replica(int(slot.job_id.split("-", 1)[1]))
            return alive, "running" if alive else "gone"
        res = subprocess.run(["squeue", "-h", "-j", slot.job_id, "-o", "%T|%N|%r"],
                             capture_output=True, text=True, check=False)
        if res.returncode != 0:
            if "Invalid job id" in res.stderr:
                return False, "left the queue"
            return True, "unknown (squeue failed)"  # the controller busy: look again later
        fields = (res.stdout.strip().splitlines() or [""])[0].split("|")
        state = fields[0]
        if not state:
            return False, "left the queue"
        if state == "RUNNING":
            slot.running_since = slot.running_since or time.time()
            slot.node = fields[1] if len(fields) > 1 else slot.node
            if slot.state == "pending":
                slot.state = "starting"
        elif state == "PENDING":
            slot.state = "pending"
        return state in ALIVE, state + (f" ({fields[2]})" if len(fields) > 2 and
                                        fields[2] not in ("", "None") else "")

    def _cancel(self, slot: Slot) -> None:
        if not slot.job_id:
            return
        if slot.job_id.startswith("local-"):
            pid = int(slot.job_id.split("-", 1)[1])
            if slot.proc is not None and slot.proc.poll() is not None:
                return
            if slot.proc is not None or _is_replica(pid):
                try:
                    os.killpg(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        else:
            subprocess.run(["scancel", slot.job_id], capture_output=True, check=False)

    def _wait_gone(self, slots: list[Slot], wait_s: float = 90.0) -> None:
        """Until no job of `slots` runs; local processes get SIGKILL after 30 s."""
        start = time.monotonic()
        while left := [s for s in slots if s.job_id and self._job_state(s)[0]]:
            waited = time.monotonic() - start
            if waited > wait_s:
                self._say(f"jobs still running {wait_s:.0f} s after their cancel: "
                          + ", ".join(s.job_id for s in left))
                return
            if waited > 30:
                for s in left:
                    if s.job_id.startswith("local-"):
                        try:
                            os.killpg(int(s.job_id.split("-", 1)[1]), signal.SIGKILL)
                        except ProcessLookupError:
                            pass
            time.sleep(1.0)

    # --- reuse after a crash ------------------------------------------------------------

    def _check_other_owner(self) -> None:
        """Refuse to run beside a live supervisor of the same run (another Snakemake, or
        rlver serve-simulator)."""
        lease = sf.read_json(self.files.lease)
        age = sf.lease_age(self.files.lease)
        if not lease or age is None or lease.get("owner") == self.owner:
            return
        host, _, pid = str(lease.get("owner", "")).rpartition(":")
        if host == socket.gethostname():
            alive = pid.isdigit() and Path(f"/proc/{pid}").exists()
        else:
            alive = age < self.serve.lease_s / 2
        if alive:
            raise RlverInputError(
                f"{self.files.lease}: another supervisor ({lease.get('owner')}) serves this "
                f"run's simulated user (lease renewed {age:.0f} s ago). Fix: stop that "
                "snakemake or rlver serve-simulator first, then rerun."
            )

    def _adopt(self) -> None:
        """Take over the live servers of a supervisor that is gone, if they serve this
        config; cancel the others."""
        old = sf.read_json(self.files.endpoint)
        if not old:
            return
        reuse = old.get("serve_hash") == self.hash and old.get("state") in (sf.READY,
                                                                            sf.STARTING)
        self.restarts = int(old.get("restarts", 0)) if reuse else 0
        self.events = list(old.get("events", [])) if reuse else []
        for entry in old.get("replicas", []):
            slot = Slot(int(entry.get("replica", 0)), job_id=str(entry.get("job_id") or ""),
                        log=str(entry.get("log") or ""), node=str(entry.get("node") or ""))
            if not slot.job_id or slot.job_id.startswith("local-") != (self.launcher == "local"):
                continue
            alive = self._job_state(slot)[0]
            url = entry.get("url")
            if (reuse and alive and url and slot.replica < len(self.slots)
                    and answers(url, self._key)):
                slot.url, slot.state = url, "ready"
                slot.started, slot.ready_since = entry.get("started"), entry.get("ready_since")
                slot.submitted = float(entry.get("submitted") or 0.0)
                slot.restarts = int(entry.get("restarts", 0))
                self.slots[slot.replica] = slot
                self._say(f"replica {slot.replica}: reusing job {slot.job_id} on {slot.node} "
                          f"at {url}, left by an earlier supervisor")
            elif alive:
                self._cancel(slot)
                self._wait_gone([slot])
                self._say(f"replica {slot.replica}: cancelled job {slot.job_id}, left by an "
                          "earlier supervisor (" + ("not answering" if reuse else
                                                    "another serve config") + ")")
        self.state = sf.READY if any(s.state == "ready" for s in self.slots) else sf.STARTING

    # --- records ------------------------------------------------------------------------

    def _write(self) -> None:
        write_json(self.files.endpoint, {
            "state": self.state, "error": self.error, "model": self.sim.model,
            "serve_hash": self.hash, "launcher": self.launcher, "supervisor": self.owner,
            "restarts": self.restarts, "events": self.events, "updated": time.time(),
            "replicas": [s.entry() for s in self.slots],
        })

    def _say(self, text: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} served simulator: {text}"
        print(f"rlver: {line}", file=sys.stderr, flush=True)
        self.files.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.files.log, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def _is_replica(pid: int) -> bool:
    """The process runs a local server job (pids are reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return b"rlver.served.replica" in cmdline and stat.rsplit(")", 1)[1].split()[0] != "Z"


def serve_in_foreground(config_path: str) -> None:
    """`rlver serve-simulator`: the run's served simulated user for stages run by hand,
    until Ctrl-C or SIGTERM; then its jobs are cancelled."""
    from rlver import config

    cfg = config.load(config_path)
    if cfg.simulator.backend != "served":
        raise RlverInputError(
            f"{config_path}: field simulator.backend is {cfg.simulator.backend!r}, not "
            "'served': this run has no served simulated user. Fix: give the config of a run "
            "with simulator=served."
        )
    supervisor = Supervisor(cfg, layout.Run.of_config(config_path).root)

    def quit_on(signum: int, frame: Any) -> None:
        supervisor._quit.set()

    signal.signal(signal.SIGTERM, quit_on)
    signal.signal(signal.SIGINT, quit_on)
    supervisor.start()
    supervisor._say(f"running for {config_path} until Ctrl-C; clients read "
                    f"{supervisor.files.endpoint}")
    try:
        supervisor.wait()
    finally:
        supervisor.stop("stopped by hand")
