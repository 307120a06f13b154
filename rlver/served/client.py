"""The clients' side of the served simulated user: the LLM simulator's backend for
simulator.backend=served, used by the rollout and evaluate jobs.

The servers' addresses come from results/<run>/simulator/endpoint.json, the key from the
run's `api_key` file. Each batch is spread over the replicas that answer (client-side
balancing: the k-th request of a batch to replica (start + k) mod R, the start moving on
with every batch). While no replica answers (the first one starting, a lost one
restarting) a call waits, at most simulator.serve.wait_min, saying what it waits for. A
request lost with its server (a connection error, a timeout or a 5xx, and the server no
longer answers GET /models) has no answer yet: it is sent again once a server answers, so
a server's restart costs time, not a fallback.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

from rlver import layout
from rlver.completions import Chat, CompletionError, OpenAIHTTPBackend
from rlver.errors import RlverInputError
from rlver.served import files as sf

#: Seconds between two looks at endpoint.json while waiting, between two probes of a
#: server taken for lost, and between two lines saying what a call waits for.
LOOK_S, REPROBE_S, SAY_S = 2.0, 5.0, 30.0
#: The probe that tells a lost server from a slow answer.
PROBE_S = 5.0
#: A request is sent again at most this many times after losing its server (a server
#: that dies on every request must not keep a stage forever).
MAX_RESENDS = 5


class Endpoint:
    """The run's served simulator as one stage sees it, shared by the backends of its
    simulator instances, so that they wait for it and say so together."""

    def __init__(self, run: layout.Run, wait_s: float) -> None:
        self.files = sf.Files(run)
        self.wait_s = wait_s
        self._lock = threading.Lock()
        self._key = ""
        self._lost: dict[tuple[str, str], float] = {}  # (url, job) -> when last probed
        self._turn = 0
        self._said = 0.0
        self._waiting_since: Optional[float] = None

    @property
    def key(self) -> str:
        if not self._key:
            self._key = sf.read_key(self.files.key)
        return self._key

    def check(self) -> dict[str, Any]:
        """endpoint.json if the served simulator is running or starting; otherwise raise
        RlverInputError with what is wrong and the fix."""
        ep = sf.read_json(self.files.endpoint)
        where = self.files.endpoint
        if ep is None:
            raise RlverInputError(
                f"{where}: not found: no served simulated user runs for this run. Fix: run "
                "the stage through snakemake (it starts the server), or start one for stages "
                "run by hand: rlver serve-simulator --config results/<run>/config.yaml."
            )
        if ep.get("state") == sf.FAILED:
            raise RlverInputError(f"{where}: {ep.get('error')}")
        if ep.get("state") == sf.STOPPED:
            raise RlverInputError(
                f"{where}: the served simulated user was stopped (its run ended, at "
                f"{sf.iso(ep.get('updated'))}). Fix: rerun snakemake, or start it for stages "
                "run by hand: rlver serve-simulator --config results/<run>/config.yaml."
            )
        lease = sf.read_json(self.files.lease) or {}
        age = sf.lease_age(self.files.lease)
        if age is None or age > float(lease.get("lease_s", 0)):
            raise RlverInputError(
                f"{self.files.lease}: the supervisor of the served simulated user is gone "
                + ("(no lease)" if age is None else f"(lease renewed {age:.0f} s ago)")
                + "; its servers stop by themselves. Fix: rerun snakemake (or rlver "
                "serve-simulator) for this run."
            )
        return ep

    def usable(self) -> list[dict[str, Any]]:
        """The replicas that answer now, waiting (at most wait_s) while there are none."""
        while True:
            ep = self.check()
            ready = [r for r in ep.get("replicas", []) if r.get("url")]
            with self._lock:
                now = time.time()
                usable = [r for r in ready if self._answers(r, now)]
                if usable:
                    if self._waiting_since is not None:
                        self._say(f"answering, after {now - self._waiting_since:.0f} s of "
                                  "waiting: " + _where(usable))
                        self._waiting_since = None
                    return usable
                self._waiting_since = self._waiting_since or now
                waited = now - self._waiting_since
                if waited > self.wait_s:
                    raise RlverInputError(
                        f"{self.files.endpoint}: the served simulated user has not answered "
                        f"for {waited:.0f} s (simulator.serve.wait_min="
                        f"{self.wait_s / 60:g}): {_where(ep.get('replicas', []))}. Fix: "
                        "read the server's log; a server pending in the queue needs its "
                        "partition free (simulator.serve.partition), or a longer wait_min."
                    )
                if now - self._said > SAY_S:
                    self._said = now
                    self._say(f"waiting for it ({waited:.0f} s of at most "
                              f"{self.wait_s:.0f} s): {_where(ep.get('replicas', []))}")
            time.sleep(LOOK_S)

    def lost(self, replica: dict[str, Any], why: str, requests: int) -> None:
        with self._lock:
            self._lost[(replica["url"], str(replica.get("job_id")))] = time.time()
            self._say(f"lost replica {replica.get('replica')} (job {replica.get('job_id')} at "
                      f"{replica['url']}: {why}); {requests} requests go again once a "
                      "server answers")

    def start(self, n: int) -> int:
        """Where a batch of n requests starts among the replicas (rotating)."""
        with self._lock:
            start, self._turn = self._turn, self._turn + max(1, n)
            return start

    def _answers(self, replica: dict[str, Any], now: float) -> bool:
        """Not taken for lost, or lost and answering again (probed every REPROBE_S)."""
        tag = (replica["url"], str(replica.get("job_id")))
        probed = self._lost.get(tag)
        if probed is None:
            return True
        if now - probed < REPROBE_S:
            return False
        from rlver.served.replica import answers

        if answers(replica["url"], self.key, PROBE_S):
            del self._lost[tag]
            return True
        self._lost[tag] = time.time()
        return False

    def _say(self, text: str) -> None:
        print(f"simulator: served simulated user: {text}", file=sys.stderr, flush=True)


def _where(replicas: Sequence[dict[str, Any]]) -> str:
    """Each replica's job, state, node and log, for messages."""
    return "; ".join(
        f"replica {r.get('replica')}: job {r.get('job_id') or '-'} {r.get('state')}"
        + (f" on {r['node']}" if r.get("node") else "") + f", log {r.get('log') or '-'}"
        for r in replicas) or "no replica"


_ENDPOINTS: dict[str, Endpoint] = {}
_ENDPOINTS_LOCK = threading.Lock()


def endpoint(run: layout.Run, sim: Any) -> Endpoint:
    """The stage's one Endpoint of `run` (shared by its simulator instances)."""
    with _ENDPOINTS_LOCK:
        key = str(run.root.resolve())
        if key not in _ENDPOINTS:
            _ENDPOINTS[key] = Endpoint(run, sim.serve.wait_min * 60.0)
        return _ENDPOINTS[key]


class ServedBackend:
    """CompletionBackend over the run's servers (see the module docstring)."""

    def __init__(self, sim: Any, run: layout.Run) -> None:
        self.sim = sim
        self.endpoint = endpoint(run, sim)
        self._clients: dict[str, OpenAIHTTPBackend] = {}
        self._pool: Optional[ThreadPoolExecutor] = None

    def complete(
        self,
        batch: list[Chat],
        seeds: Optional[Sequence[int]] = None,
        schema: Optional[dict[str, Any]] = None,
    ) -> list[str | Exception]:
        if not batch:
            return []
        per_item: list[Optional[int]] = list(seeds) if seeds is not None else [None] * len(batch)
        out: list[str | Exception | None] = [None] * len(batch)
        resends = [0] * len(batch)
        pending = list(range(len(batch)))
        while pending:
            replicas = self.endpoint.usable()
            start = self.endpoint.start(len(pending))
            groups: dict[int, list[int]] = {}
            for k, i in enumerate(pending):
                groups.setdefault((start + k) % len(replicas), []).append(i)
            sends = [(replicas[g], items) for g, items in groups.items()]
            answers = self._send(sends, batch, per_item, schema)
            pending = []
            for (replica, items), got in zip(sends, answers, strict=True):
                client = self._client(replica["url"])
                lost: Optional[str] = None
                again = []
                for i, answer in zip(items, got, strict=True):
                    if (isinstance(answer, CompletionError) and answer.retryable
                            and resends[i] < MAX_RESENDS):
                        if lost is None:
                            lost = client.probe(PROBE_S)
                        if lost:
                            again.append(i)
                            resends[i] += 1
                            continue
                    out[i] = answer
                if again:
                    self.endpoint.lost(replica, str(lost), len(again))
                    pending += again
        return [a if a is not None else CompletionError("no answer") for a in out]

    def _send(self, sends: list[tuple[dict[str, Any], list[int]]], batch: list[Chat],
              seeds: list[Optional[int]], schema: Optional[dict[str, Any]]
              ) -> list[list[str | Exception]]:
        def one(replica: dict[str, Any], items: list[int]) -> list[str | Exception]:
            # A None seed goes out without one (OpenAIHTTPBackend sends only those set).
            chosen: Any = [seeds[i] for i in items]
            return self._client(replica["url"]).complete([batch[i] for i in items], chosen,
                                                         schema)

        if len(sends) == 1:
            return [one(*sends[0])]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=int(self.sim.serve.replicas),
                                            thread_name_prefix="served")
        return list(self._pool.map(lambda s: one(*s), sends))

    def _client(self, url: str) -> OpenAIHTTPBackend:
        if url not in self._clients:
            sim = self.sim
            self._clients[url] = OpenAIHTTPBackend(
                url, sim.model, api_key=self.endpoint.key, max_concurrency=sim.max_concurrency,
                timeout_s=sim.timeout_s, temperature=sim.temperature, max_tokens=sim.max_tokens)
        return self._clients[url]

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients = {}
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
