"""Loud simulator failures: an HTTP simulator's endpoint is checked before the first
dialogue, and a rollout shard or evaluation with more fallen-back simulator turns than
simulator.max_fallback_rate fails, naming the endpoint, the share and the most common error.

The endpoint is a real stdlib HTTP server on 127.0.0.1 (bench/servers.py) that answers a
chosen share of step-one conversations with garbage, every attempt at them (a model that
cannot answer some prompts: retries do not help). The policy side is scripted (a reply per
seed), so the stages run in seconds; the simulator, the dialogue loop, the stages and
their files are the real ones.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bench.servers import FakeChatServer, Reply, free_port
from rlver import config
from rlver.engines import Engine, Sampled
from rlver.errors import RlverInputError
from rlver.evaluate import evaluate_policy
from rlver.fallbacks import RATE_KEY, fallback_stats
from rlver.layout import Run
from rlver.models import link_tree
from rlver.personas import build_persona_sets
from rlver.reporting.report import build_report
from rlver.rollout import rollout_shard
from rlver.schema import read_metadata
from rlver.simulator.health import check_endpoint, check_fallback_rate, workflow_note

from .helpers import TINY, CharTokenizer, snakemake

FEEL_OK = '{"reason": "You listened to me.", "delta": 6}'
SPEAK_OK = "Thanks, that helps a bit."
#: 8 dialogues of exactly 8 turns (+6 per turn from 30 never reaches 100): 64 turns, so
#: a 2% share is one garbage conversation, 20% is twelve.
SIZE = ["rollout.personas_per_iteration=4", "rollout.samples_per_persona=2",
        "rollout.shards=1", "rollout.batch_size=8", "simulator.max_turns=8",
        "personas.num_test=8", "evaluation.num_personas=8", "evaluation.max_turns=8",
        "evaluation.batch_size=8"]
HTTP = ["simulator=llm_http", "simulator.model=fake", "simulator.max_retries=1",
        "simulator.max_user_tokens=128",
        "simulator.backoff_s=0.01", "simulator.max_concurrency=8"]


class Garbage:
    """Answers the j-th distinct step-one conversation with garbage when the share
    `rate` crosses an integer there (rate 0.2: the 5th, 10th, ...), on every attempt."""

    def __init__(self) -> None:
        self.rate = 0.0
        self.seen: dict[str, bool] = {}
        self._lock = threading.Lock()

    def reset(self, rate: float) -> None:
        self.rate, self.seen = rate, {}

    def __call__(self, body: dict[str, Any]) -> Reply:
        if '"delta"' not in body["messages"][-1]["content"]:
            return Reply(content=SPEAK_OK)
        key = json.dumps(body["messages"])
        with self._lock:
            if key not in self.seen:
                j = len(self.seen) + 1
                self.seen[key] = int(j * self.rate) > int((j - 1) * self.rate)
            bad = self.seen[key]
        return Reply("raw", "<html>502 bad gateway</html>") if bad else Reply(content=FEEL_OK)


@pytest.fixture(scope="module")
def garbage():
    respond = Garbage()
    with FakeChatServer(respond) as server:
        yield respond, server.base_url


class ScriptedPolicy(Engine):
    """A different reply for every seed, as character ids ending in a stop token."""

    def __init__(self) -> None:
        self.tokenizer = CharTokenizer()
        self.max_context = 10**6

    def generate(self, prompts, settings, seeds):
        out = []
        for seed in seeds:
            ids = [ord(c) for c in f"That sounds hard. Tell me more ({seed % 10**6})."] + [0]
            out.append(Sampled(tuple(ids), (-0.1,) * len(ids), finished=True))
        return out


@pytest.fixture()
def engine() -> ScriptedPolicy:
    return ScriptedPolicy()


def _run(root: Path, base_model: Path, *overrides: str) -> tuple[Run, Path]:
    """A frozen tiny run (iteration 0's policy, persona sets) under `root`."""
    cfg = config.compose("smoke", [*TINY, *SIZE, *overrides], run="health")
    run = Run(root / "results" / "health")
    config.freeze(cfg, run.config)
    personas = root / "personas"
    build_persona_sets(cfg.personas, personas / "train.parquet", personas / "test.parquet")
    link_tree(base_model, run.policy(0))
    return run, personas


def _rollout(run: Run, personas: Path, engine: Any = None) -> Path:
    out = run.shard(0, 0)
    rollout_shard(str(run.config), 0, 0, str(run.policy(0)), str(personas / "train.parquet"),
                  str(out), engine=engine)
    return out


def _evaluate(run: Run, personas: Path, engine: Any = None) -> dict[str, Any]:
    return evaluate_policy(str(run.config), 0, str(run.policy(0)),
                           str(personas / "test.parquet"), str(run.eval_dir(0)), engine=engine)


# --- the endpoint check ------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("stage", ["rollout", "evaluate"])
def test_endpoint_down_fails_before_the_first_dialogue(stage: str, tmp_path: Path,
                                                       base_model: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    run, personas = _run(tmp_path, base_model, *HTTP, f"simulator.base_url={url}",
                         "simulator.timeout_s=5")
    t0 = time.monotonic()
    with pytest.raises(RlverInputError) as err:
        (_rollout if stage == "rollout" else _evaluate)(run, personas)
    assert time.monotonic() - t0 < 5  # the check, not a model load and 64 fallbacks
    assert f"simulator endpoint {url}" in str(err.value) and "Connection refused" in str(err.value)
    assert "Fix:" in str(err.value)
    assert not run.shard(0, 0).exists() and not run.eval_metrics(0).exists()


@pytest.mark.timeout(60)
def test_endpoint_that_never_answers_fails_within_the_timeout(tmp_path: Path,
                                                              base_model: Path) -> None:
    with socket.socket() as black_hole:  # connections queue in the backlog, never answered
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(8)
        url = f"http://127.0.0.1:{black_hole.getsockname()[1]}/v1"
        run, personas = _run(tmp_path, base_model, *HTTP, f"simulator.base_url={url}",
                             "simulator.timeout_s=1")
        t0 = time.monotonic()
        with pytest.raises(RlverInputError, match="no answer within 1 s"):
            _rollout(run, personas)
        assert time.monotonic() - t0 < 4


# --- the fallback share ------------------------------------------------------------------


@pytest.fixture()
def http_run(garbage, tmp_path: Path, base_model: Path):
    """(the server's answers, its URL, a run using it, the run's personas)."""
    respond, url = garbage
    return (respond, url, *_run(tmp_path, base_model, *HTTP, f"simulator.base_url={url}"))


@pytest.mark.timeout(60)
def test_twenty_percent_garbage_fails_the_shard_and_the_evaluation(http_run, engine) -> None:
    respond, url, run, personas = http_run
    for stage in (_rollout, _evaluate):
        respond.reset(0.2)
        with pytest.raises(RlverInputError) as err:
            stage(run, personas, engine)
        message = str(err.value)
        assert "12 of 64 simulator turns (18.8%) fell back" in message, message
        assert f"endpoint {url} (model 'fake')" in message
        assert "most common error (12 turns): bad response (not a chat completion)" in message
        assert "simulator.max_fallback_rate=0.05" in message and "Fix:" in message
    assert not run.shard(0, 0).exists() and not run.eval_metrics(0).exists()


@pytest.mark.timeout(60)
def test_two_percent_garbage_passes_and_the_rate_reaches_metrics_and_report(
    http_run, engine
) -> None:
    respond, _, run, personas = http_run
    respond.reset(0.02)
    shard = _rollout(run, personas, engine)
    meta = read_metadata(shard)
    assert float(meta[RATE_KEY]) == 1 / 64 and meta["simulator_fallbacks"] == "1"
    assert meta["simulator_top_error"].startswith("bad response (not a chat completion)")
    respond.reset(0.02)
    metrics = _evaluate(run, personas, engine)
    saved = json.loads(run.eval_metrics(0).read_text())
    assert saved[RATE_KEY] == metrics[RATE_KEY] == 1 / 64 and saved["simulator_turns"] == 64
    page = build_report(run.root, run.report).read_text()
    assert "simulator fallback (train / eval)" in page and "1.6% / 1.6%" in page


@pytest.mark.timeout(60)
def test_rule_based_simulator_never_falls_back(engine, tmp_path: Path,
                                               base_model: Path) -> None:
    run, personas = _run(tmp_path, base_model)
    shard = _rollout(run, personas, engine)
    assert read_metadata(shard)[RATE_KEY] == "0.0"
    assert _evaluate(run, personas, engine)[RATE_KEY] == 0.0


# --- pure parts ------------------------------------------------------------------------


def _row(flags: list[bool], reasons: list[str], sample: int = 0) -> dict[str, Any]:
    return {"sample": sample, "parse_error": flags, "reason": reasons}


def test_stats_count_turns_once_and_name_the_most_common_error() -> None:
    fail = "parse_error: feel: no usable answer after 2 attempts: "
    rows = [
        _row([False, True, True], ["ok", fail + "timeout after 5 s",
                                   fail + "connection error: ConnectError: refused"]),
        _row([True], [fail + "connection error: ReadError: reset"]),
        _row([True], [fail + "timeout after 5 s"], sample=1),  # a think row: same dialogue
    ]
    stats = fallback_stats(rows)
    assert stats == {"simulator_turns": 4, "simulator_fallbacks": 3, RATE_KEY: 0.75,
                     "simulator_top_error": "connection error: ConnectError: refused",
                     "simulator_top_error_count": 2}
    sim = config.compose("smoke", ["simulator=llm_http", "simulator.model=m"]).simulator
    with pytest.raises(RlverInputError, match=r"3 of 4 simulator turns \(75.0%\)"):
        check_fallback_rate(stats, sim, "rollout iter 0 shard 0")
    check_fallback_rate(fallback_stats([_row([False] * 20, ["ok"] * 20)]), sim, "x")
    assert fallback_stats([])[RATE_KEY] == 0.0


def test_max_fallback_rate_is_a_validated_key_left_out_of_old_hashes() -> None:
    cfg = config.compose("smoke", [])
    assert cfg.simulator.max_fallback_rate == 0.05
    assert "max_fallback_rate" not in config.to_container(cfg)["simulator"]
    with pytest.raises(RlverInputError, match="simulator.max_fallback_rate"):
        config.compose("smoke", ["simulator.max_fallback_rate=1.5"])
    changed = config.compose("smoke", ["simulator.max_fallback_rate=0.2"])
    assert config.config_hash(changed) != config.config_hash(cfg)


@pytest.mark.timeout(60)
def test_dry_run_names_the_endpoint_it_will_need(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    res = snakemake(tmp_path, "http", ["simulator=llm_http", "simulator.model=m",
                                       f"simulator.base_url={url}"], args=("-n",))
    assert res.returncode == 0, res.stderr
    assert f"the simulator is the HTTP endpoint {url} (model 'm')" in res.stderr
    assert "NOT reachable from this machine now" in res.stderr


# --- a server that dies mid-rollout ------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_server_that_dies_mid_rollout_fails_the_shard_and_a_rerun_completes(
        tmp_path: Path, base_model: Path, engine) -> None:
    """The simulator's server answers 39 requests, then dies while the shard's dialogues
    go on (its listening socket closed: new connections refused; requests on connections
    already open dropped unanswered): the retries fail, the shard fails naming
    the endpoint and the connection error and writes nothing; the same server started
    again on the same port, the rerun completes with no fallback."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    run, personas = _run(tmp_path, base_model, *HTTP, f"simulator.base_url={url}")
    answered = 0
    died = threading.Event()

    def respond(body: dict[str, Any]) -> Reply:
        nonlocal answered
        answered += 1
        if answered == 40:  # dies: its socket closed, open connections dropped
            threading.Thread(target=server.__exit__, args=(None, None, None)).start()
            died.set()
        if died.is_set() and answered < 1000:
            return Reply("drop")
        last = body["messages"][-1]["content"]
        return Reply(content=FEEL_OK if '"delta"' in last else SPEAK_OK)

    server = FakeChatServer(respond, port=port).__enter__()
    with pytest.raises(RlverInputError) as err:
        _rollout(run, personas, engine)
    assert died.is_set()
    message = str(err.value)
    assert f"endpoint {url}" in message and "connection" in message.lower(), message
    assert not run.shard(0, 0).exists()
    with FakeChatServer(lambda body: respond(body), port=port):
        answered = 1000  # past the death: the new server keeps answering
        shard = _rollout(run, personas, engine)
    assert read_metadata(shard)[RATE_KEY] == "0.0"


def test_a_url_that_cannot_be_used_is_named_not_raised() -> None:
    """A placeholder left in simulator.base_url (as in the docs' examples): the dry run's
    note says so, the stages' check refuses it with the fix."""
    cfg = config.compose("smoke", [*HTTP, "simulator.base_url=http://HOST:PORT/v1"], run="x")
    assert "not a usable URL" in workflow_note(cfg.simulator)
    with pytest.raises(RlverInputError, match="not a usable URL .*Fix: start the server"):
        check_endpoint(cfg.simulator)
