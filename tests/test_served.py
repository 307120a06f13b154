"""The served simulated user without vLLM: its config, files, client and supervisor.

The supervisor's server here is bench/servers.py's fixed-latency chat endpoint in place of
vLLM's (ReplicaSpec.command), so that a start takes a second, not a minute: the processes,
signals, lease, endpoint.json and restarts are the real ones. tests/test_served_workflow.py
runs the real vLLM server through the workflow.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bench.servers import FakeChatServer, Reply
from rlver import config, layout
from rlver.completions import CompletionError
from rlver.errors import RlverInputError
from rlver.served import files as sf
from rlver.served.client import ServedBackend
from rlver.served.replica import ReplicaSpec, command, flags, server_args
from rlver.served.status import lines, served_status
from rlver.served.supervisor import Supervisor

from .helpers import ROOT, TINY

#: A served tiny config on this machine (no GPUs), quick to give up and to notice.
SERVED = ["simulator=served", "simulator.serve.model_path=/models/sim", "simulator.model=fake",
          "simulator.serve.gpus=0", "simulator.serve.tensor_parallel=1",
          "simulator.serve.lease_s=10", "simulator.serve.wait_min=1",
          "simulator.serve.start_attempts=2"]
#: The fake server as a replica's server command.
FAKE = (sys.executable, str(ROOT / "bench" / "servers.py"), "--port", "{port}",
        "--latency-ms", "100")
CHAT = [{"role": "user", "content": "hello"}]


def _cfg(*more: str) -> Any:
    return config.compose("smoke", [*TINY, *SERVED, *more], run="served")


# --- config ------------------------------------------------------------------------------


def test_served_config_composes_and_changes_no_other_run() -> None:
    cfg = _cfg()
    assert cfg.simulator.backend == "served" and cfg.simulator.serve.model_path == "/models/sim"
    # the key is left out of any config that keeps its default: no other run's hash moves
    assert "serve" not in config.to_container(config.compose("smoke"))["simulator"]
    assert "serve" in config.to_container(cfg)["simulator"]


@pytest.mark.parametrize("overrides, wanted", [
    (["simulator.serve.model_path="], "simulator.serve.model_path: a local Hugging Face"),
    (["simulator.serve.gpus=4", "simulator.serve.tensor_parallel=2"],
     "simulator.serve.tensor_parallel must be simulator.serve.gpus"),
    (["simulator.serve.replicas=0"], "simulator.serve.replicas must be at least 1"),
    (["simulator.serve.lease_s=1"], "simulator.serve.lease_s must be at least 10"),
])
def test_bad_served_config_is_named(overrides: list[str], wanted: str) -> None:
    with pytest.raises(RlverInputError, match="Fix") as err:
        _cfg(*overrides)
    assert wanted in str(err.value)


def test_server_flags_are_set_as_the_docs_say() -> None:
    """simulator.serve.vllm_args takes any vLLM flag on the command line, as its docs
    show (`simulator.serve.vllm_args.max_model_len=16384`), without Hydra's `++`."""
    cfg = _cfg("simulator.serve.vllm_args.max_model_len=16384",
               "simulator.serve.vllm_args.enable_prefix_caching=true")
    assert dict(cfg.simulator.serve.vllm_args) == {"max_model_len": 16384,
                                                    "enable_prefix_caching": True}


def test_paper_experiments_serve_their_simulated_user(stub_model: Path) -> None:
    cfg = config.compose("paper_grpo_think_vanilla", [
        f"model.source={stub_model}", "simulator.serve.model_path=/models/Qwen2.5-72B-Instruct",
        "retention=none"])
    serve = cfg.simulator.serve
    assert cfg.simulator.backend == "served" and cfg.simulator.base_url == ""
    assert (serve.gpus, serve.tensor_parallel, serve.replicas) == (4, 4, 1)


# --- files, flags --------------------------------------------------------------------------


def test_key_is_made_once_for_its_owner_only(tmp_path: Path) -> None:
    key = tmp_path / "simulator" / "api_key"
    sf.ensure_key(key)
    first = sf.read_key(key)
    assert len(first) >= 40 and key.stat().st_mode & 0o777 == 0o600
    os.chmod(key, 0o644)
    sf.ensure_key(key)
    assert sf.read_key(key) == first and key.stat().st_mode & 0o777 == 0o600
    with pytest.raises(RlverInputError, match="rlver serve-simulator"):
        sf.read_key(tmp_path / "nokey")


def test_vllm_command_has_the_flags_and_never_the_key() -> None:
    assert flags({"max_model_len": 8192, "enable_prefix_caching": True,
                  "enable_chunked_prefill": False, "x": None, "limit": {"image": 0}}) == [
        "--max-model-len", "8192", "--enable-prefix-caching", "--no-enable-chunked-prefill",
        "--limit", '{"image": 0}']
    spec = ReplicaSpec("/r", 0, "/models/sim", "simulator", 4, {"max_model_len": 8192},
                       "0.0.0.0", 60.0, 30.0)
    gpu = command(spec, 8001, cpu=False)
    assert gpu[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert "--tensor-parallel-size" in gpu and gpu[gpu.index("--tensor-parallel-size") + 1] == "4"
    assert "--api-key" not in gpu and "--enforce-eager" not in gpu
    cpu = server_args(spec, cpu=True)
    assert cpu["enforce_eager"] and cpu["max_model_len"] == 8192
    assert cpu["max_num_batched_tokens"] == 8192 and cpu["enable_chunked_prefill"] is False


# --- the client ----------------------------------------------------------------------------


def _endpoint(run: layout.Run, replicas: list[dict[str, Any]], state: str = sf.READY,
              error: str = "", lease_age_s: float = 0.0) -> None:
    files = sf.Files(run)
    sf.ensure_key(files.key)
    sf.write_lease(files.lease, "test:0", 10)
    if lease_age_s:
        lease = json.loads(files.lease.read_text())
        lease["renewed"] -= lease_age_s
        files.lease.write_text(json.dumps(lease))
    files.endpoint.write_text(json.dumps({"state": state, "error": error, "replicas": [
        {"replica": i, "job_id": str(100 + i), "state": "ready", "log": f"/logs/{i}.log"} | r
        for i, r in enumerate(replicas)]}))


def _answer(body: dict[str, Any]) -> Reply:
    return Reply(content=f"seed {body.get('seed')}")


def test_client_spreads_a_batch_over_the_replicas_with_the_key(tmp_path: Path) -> None:
    run = layout.Run(tmp_path / "run")
    with FakeChatServer(_answer) as a, FakeChatServer(_answer) as b:
        _endpoint(run, [{"url": a.base_url}, {"url": b.base_url}])
        backend = ServedBackend(_cfg("simulator.serve.replicas=2").simulator, run)
        got = backend.complete([CHAT] * 8, list(range(8)))
        backend.close()
    assert got == [f"seed {i}" for i in range(8)]
    assert len(a.requests) == len(b.requests) == 4
    key = sf.read_key(sf.Files(run).key)
    assert set(a.authorization + b.authorization) == {f"Bearer {key}"}


def test_requests_lost_with_their_server_go_again_to_its_replacement(tmp_path: Path,
                                                                     capsys) -> None:
    """Replica A dies with four requests in flight (it stops listening, then drops their
    connections); the requests wait until endpoint.json names replica B, and B answers
    them: four answers, none a failure."""
    run = layout.Run(tmp_path / "run")
    closed = threading.Event()

    def dying(body: dict[str, Any]) -> Reply:
        closed.wait(10)
        return Reply(kind="drop")

    with FakeChatServer(dying) as a, FakeChatServer(_answer) as b:
        _endpoint(run, [{"url": a.base_url}])
        backend = ServedBackend(_cfg().simulator, run)

        def replace() -> None:
            while len(a.requests) < 4:
                time.sleep(0.05)
            a.__exit__(None, None, None)
            closed.set()
            time.sleep(3)  # the client waits meanwhile
            _endpoint(run, [{"url": b.base_url, "job_id": "101"}])

        threading.Thread(target=replace, daemon=True).start()
        got = backend.complete([CHAT] * 4, [1, 2, 3, 4])
        backend.close()
    assert got == [f"seed {i}" for i in (1, 2, 3, 4)]
    assert len(b.requests) == 4
    err = capsys.readouterr().err
    assert "lost replica 0" in err and "4 requests go again" in err
    assert "answering, after" in err


def test_a_slow_server_that_still_answers_is_not_taken_for_lost(tmp_path: Path) -> None:
    run = layout.Run(tmp_path / "run")
    with FakeChatServer(lambda body: Reply(delay_s=2.0, content="late")) as a:
        _endpoint(run, [{"url": a.base_url}])
        backend = ServedBackend(_cfg("simulator.timeout_s=0.5").simulator, run)
        got = backend.complete([CHAT], [1])
        backend.close()
    assert isinstance(got[0], CompletionError) and "timeout" in str(got[0])


@pytest.mark.parametrize("case, wanted", [
    ("missing", "no served simulated user runs for this run"),
    ("failed", "did not start: replica 0 failed 3 starts; its log: /logs/0.log"),
    ("stopped", "was stopped"),
    ("stale", "the supervisor of the served simulated user is gone (lease renewed 6"),
    ("never", "has not answered for"),
])
def test_a_client_without_a_server_fails_with_one_message(tmp_path: Path, case: str,
                                                          wanted: str) -> None:
    run = layout.Run(tmp_path / "run")
    if case == "failed":
        _endpoint(run, [{}], sf.FAILED, "the served simulated user did not start: replica 0 "
                  "failed 3 starts; its log: /logs/0.log. Fix: ...")
    elif case == "stopped":
        _endpoint(run, [{}], sf.STOPPED)
    elif case == "stale":
        _endpoint(run, [{"url": "http://127.0.0.1:9/v1"}], lease_age_s=60)
    elif case == "never":
        _endpoint(run, [{"state": "pending"}], sf.STARTING)
    backend = ServedBackend(_cfg().simulator, run)
    backend.endpoint.wait_s = 2.0
    with pytest.raises(RlverInputError, match="Fix") as err:
        backend.complete([CHAT], [1])
    assert wanted in str(err.value)
    if case == "never":
        assert "job 100 pending" in str(err.value) and "/logs/0.log" in str(err.value)


# --- the supervisor ------------------------------------------------------------------------


def _wait(what: Any, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (got := what()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)
    return got


def _ready_endpoint(files: sf.Files, restarts: int = 0) -> dict[str, Any]:
    def ready() -> Any:
        ep = sf.read_json(files.endpoint)
        return ep if ep and ep["state"] == sf.READY and ep["restarts"] == restarts else None
    return _wait(ready)


def _pid(ep: dict[str, Any]) -> int:
    return int(ep["replicas"][0]["job_id"].removeprefix("local-"))


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state == "Z"


def test_supervisor_serves_restarts_a_killed_server_and_stops_it(tmp_path: Path) -> None:
    supervisor = Supervisor(_cfg(), tmp_path / "run", command=FAKE, poll_s=0.5)
    files = supervisor.files
    supervisor.start()
    try:
        ep = _ready_endpoint(files)
        first = ep["replicas"][0]
        assert first["url"].startswith("http://127.0.0.1:") and first["node"]
        assert ep["model"] == "fake" and ep["serve_hash"] == sf.serve_hash(_cfg().simulator)
        os.killpg(_pid(ep), signal.SIGKILL)
        ep = _ready_endpoint(files, restarts=1)
        assert ep["replicas"][0]["job_id"] != first["job_id"]
        assert "ended (exit status -9)" in ep["events"][0]["why"]
        st = served_status(files.run)
        assert st is not None and st["restarts"] == 1
        text = "\n".join(lines(st))
        assert "served (ready), 1 restarts" in text and "up since" in text
        assert "last restart" in text and "exit status -9" in text
    finally:
        supervisor.stop("test over")
    assert _wait(lambda: _gone(_pid(ep)), 10)
    ep = sf.read_json(files.endpoint)
    assert ep is not None and ep["state"] == sf.STOPPED and not files.lease.exists()
    log = files.log.read_text()
    assert "restarting it (restart 1" in log and "stopped (test over)" in log
    assert files.key.stat().st_mode & 0o777 == 0o600


def test_supervisor_gives_up_on_a_server_that_never_answers(tmp_path: Path) -> None:
    supervisor = Supervisor(_cfg(), tmp_path / "run", command=(sys.executable, "-c", "exit(3)"),
                            poll_s=0.3)
    supervisor.start()
    try:
        ep = _wait(lambda: (e := sf.read_json(supervisor.files.endpoint)) and
                   e["state"] == sf.FAILED and e)
    finally:
        supervisor.stop("test over")
    assert "failed 2 starts in a row" in ep["error"] and "exit status 1" in ep["error"]
    assert ep["replicas"][0]["log"] in ep["error"] and "Fix:" in ep["error"]
    backend = ServedBackend(_cfg().simulator, supervisor.files.run)
    with pytest.raises(RlverInputError, match="did not start"):
        backend.complete([CHAT], [1])


#: A supervisor in a process of its own, as in a Snakemake that is then killed -9.
SUPERVISOR = """
import sys, time
from rlver import config
from rlver.served.supervisor import Supervisor
cfg = config.compose("smoke", sys.argv[2:], run="served")
Supervisor(cfg, sys.argv[1], command={fake!r}, poll_s=0.5).start()
time.sleep(600)
"""


def test_servers_of_a_killed_supervisor_stop_or_are_reused(tmp_path: Path) -> None:
    """A supervisor killed with SIGKILL (a Snakemake killed -9) renews no lease: its server
    stops by itself within lease_s (10 s). A new supervisor started before that reuses the
    running server instead of starting another."""
    run = tmp_path / "run"
    files = sf.Files(layout.Run(run))
    script = SUPERVISOR.format(fake=FAKE)

    def killed_supervisor() -> dict[str, Any]:
        proc = subprocess.Popen([sys.executable, "-c", script, str(run), *TINY, *SERVED],
                                cwd=ROOT, stderr=subprocess.DEVNULL)
        ep = _ready_endpoint(files)
        proc.kill()
        proc.wait()
        return ep

    ep = killed_supervisor()
    supervisor = Supervisor(_cfg(), run, command=FAKE, poll_s=0.5)
    supervisor.start()
    try:
        again = _ready_endpoint(files)
        assert again["replicas"][0]["job_id"] == ep["replicas"][0]["job_id"]
        assert "reusing job" in files.log.read_text()
    finally:
        supervisor.stop("test over")
    assert _wait(lambda: _gone(_pid(ep)), 10)

    ep = killed_supervisor()
    t0 = time.monotonic()
    assert _wait(lambda: _gone(_pid(ep)), 30)
    assert time.monotonic() - t0 < 20  # lease_s 10 and two looks at it
    log = Path(ep["replicas"][0]["log"]).read_text()
    assert "the supervisor is gone" in log


def test_a_second_live_supervisor_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    files = sf.Files(layout.Run(run))
    files.root.mkdir(parents=True)
    sf.write_lease(files.lease, f"{os.uname().nodename}:{os.getppid()}", 10)
    with pytest.raises(RlverInputError, match="another supervisor"):
        Supervisor(_cfg(), run, command=FAKE).start()


# --- the command line ----------------------------------------------------------------------


def _frozen(tmp_path: Path, *overrides: str) -> Path:
    cfg = config.compose("smoke", [*TINY, *overrides], run="run")
    path = tmp_path / "results" / "run" / "config.yaml"
    config.freeze(cfg, path)
    return path


@pytest.mark.parametrize("case, wanted", [
    ("missing", "frozen run config not found"),
    ("heuristic", "field simulator.backend is 'heuristic', not 'served'"),
])
def test_serve_simulator_refuses_bad_input(tmp_path: Path, capsys, case: str, wanted: str
                                           ) -> None:
    from rlver.cli import main

    path = tmp_path / "nope.yaml" if case == "missing" else _frozen(tmp_path)
    code = main(["serve-simulator", "--config", str(path)])
    text = capsys.readouterr().err
    assert code == 2 and text.count("error:") == 1 and str(path) in text, text
    assert wanted in text and "Fix" in text and "Traceback" not in text
    assert not (path.parent / "simulator").exists()


def test_a_stage_run_by_hand_without_a_server_says_how_to_start_one(
        tmp_path: Path, tiny_run, capsys) -> None:
    from rlver.cli import main

    run, personas = tiny_run
    served = _frozen(tmp_path, *SERVED)
    out = tmp_path / "shard.parquet"
    code = main(["rollout", "--config", str(served), "--iteration", "0", "--shard", "0",
                 "--policy", str(run / "iter_0000" / "policy"),
                 "--personas", str(personas / "train.parquet"), "--out", str(out)])
    text = capsys.readouterr().err
    assert code == 2 and text.count("error:") == 1, text
    assert "endpoint.json: not found" in text and "rlver serve-simulator --config" in text
    assert not out.exists()
