"""The served simulated user in `rlver status`: its state, each replica's job, node, up
time and requests served (vLLM's /metrics, counted since that server started), and the
restarts, read from endpoint.json and the servers themselves."""

from __future__ import annotations

import time
import urllib.request
from typing import Any, Optional

from rlver import layout
from rlver.served import files as sf
from rlver.timefmt import duration

#: The servers are asked for their metrics this long at most.
METRICS_TIMEOUT_S = 3.0


def requests_served(url: str) -> Optional[int]:
    """Finished requests of the server at `url` (.../v1), from vLLM's counter
    `vllm:request_success_total` over all finish reasons; None if it does not answer."""
    base = url.removesuffix("/").removesuffix("/v1")
    try:
        with urllib.request.urlopen(base + "/metrics", timeout=METRICS_TIMEOUT_S) as response:
            text = response.read().decode("utf-8", "replace")
    except OSError:
        return None
    total = 0.0
    for line in text.splitlines():
        if line.startswith("vllm:request_success_total"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def served_status(run: layout.Run, now: Optional[float] = None) -> Optional[dict[str, Any]]:
    """The served simulator of `run` as a JSON-ready dict; None if it has none yet."""
    files = sf.Files(run)
    ep = sf.read_json(files.endpoint)
    if ep is None:
        return None
    now = time.time() if now is None else now
    replicas = []
    for r in ep.get("replicas", []):
        up = r.get("ready_since") if r.get("url") else None
        replicas.append({
            "replica": r.get("replica"), "job_id": r.get("job_id"), "node": r.get("node"),
            "state": r.get("state"), "url": r.get("url"), "log": r.get("log"),
            "up_since": up, "up_s": None if up is None else now - up,
            "restarts": r.get("restarts", 0),
            "requests_served": requests_served(r["url"]) if r.get("url") else None,
        })
    events = ep.get("events") or []
    return {"state": ep.get("state"), "error": ep.get("error") or "", "model": ep.get("model"),
            "restarts": ep.get("restarts", 0), "last_restart": events[-1] if events else None,
            "replicas": replicas, "log": str(files.log)}


def lines(st: dict[str, Any]) -> list[str]:
    """The served simulator's lines of `rlver status`."""
    out = [f"simulated user: served ({st['state']}), {st['restarts']} restarts; "
           f"log {st['log']}"]
    if st["error"]:
        out.append(f"  error: {st['error']}")
    for r in st["replicas"]:
        where = f"job {r['job_id'] or '-'}" + (f" on {r['node']}" if r["node"] else "")
        if r["up_since"] is not None:
            served = r["requests_served"]
            out.append(f"  replica {r['replica']}: {where}, {r['state']} at {r['url']}, up since "
                       f"{sf.iso(r['up_since'])} ({duration(r['up_s'])}), "
                       + ("requests served: unknown (no answer)" if served is None else
                          f"{served} requests served"))
        else:
            out.append(f"  replica {r['replica']}: {where}, {r['state']}; log {r['log']}")
    if st["last_restart"]:
        e = st["last_restart"]
        out.append(f"  last restart: {sf.iso(e['time'])}, replica {e['replica']}: {e['why']}")
    return out
