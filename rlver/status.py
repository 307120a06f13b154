"""`rlver status RUN_DIR`: where a run is, read from its files, mid-run or after.

- Iterations done: updates whose `metrics.json` exists, of the frozen config's
  `iterations`; evaluations done of those the config plans.
- The stage running now: a stage whose log exists but whose output does not. Every rule
  writes its log from its first second and Snakemake deletes a job's outputs before it
  starts it, so such a stage has started and not finished. Whether Snakemake is running
  is its lock in the working directory (`.snakemake/locks/`, the folder above
  `results/`, or `--workdir` where results are stored elsewhere); without it, those
  stages stopped unfinished (the next `snakemake` redoes them). The lock of another run
  in the same working directory does not count: a lock file lists the outputs its
  Snakemake may write. Jobs queued on a cluster but not
  started do not show.
  Snakemake's own records (`.snakemake/incomplete/`) are not read: their format is
  Snakemake's internal one and differs between its storage backends.
- Time per iteration: the mean time between two updates' `metrics.json` (the first
  iteration: since the frozen config was written); the time left is that mean times the
  iterations to go, less the time since the last update. The last evaluation and the
  report come after.
- The latest train reward (the update's `reward_mean`) and the latest evaluation, beside
  iteration 0's. The report is built once, at the end (rule `report`); `rlver report`
  builds one from whatever a run holds at any time.
- With simulator.backend=served: the servers (job, node, up since, requests served,
  restarts; rlver.served.status).
"""

from __future__ import annotations

import json
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

from rlver import layout
from rlver.errors import RlverInputError
from rlver.io import read_json_object
from rlver.retention_tasks import retention_iterations
from rlver.timefmt import duration


def _workdir(run: layout.Run) -> Path | None:
    """Snakemake's working directory: the folder holding results/ (None elsewhere)."""
    root = run.root.resolve()
    return root.parents[1] if root.parent.name == "results" else None


def _snakemake_running(run: layout.Run, workdir: Path | None = None) -> bool:
    """Whether a Snakemake holds its working directory's lock (`workdir`, by default the
    folder holding results/) with an output of this run: its
    `.snakemake/locks/<n>.output.lock` lists the outputs it may write, one a line."""
    workdir = workdir or _workdir(run)
    if workdir is None or not (workdir / ".snakemake" / "locks").is_dir():
        return False
    locks = workdir / ".snakemake" / "locks"
    root = run.root.resolve()
    for lock in locks.glob("*.output.lock"):
        for line in lock.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.strip() and (workdir / line.strip()).resolve().is_relative_to(root):
                return True
    return False


def _stages(run: layout.Run, cfg: Any, evaluated: list[int]) -> list[tuple[str, Path, Path]]:
    """(label, log, output) of every stage of the run, in the order they run."""
    out = [("init_policy", run.log("init_policy"), run.policy(0))]
    for i in range(cfg.iterations):
        for s in range(cfg.rollout.shards):
            out.append((f"rollout iter {i} shard {s}", run.log("rollout", i, s),
                        run.shard(i, s)))
        out.append((f"update iter {i}", run.log("update", i), run.update_metrics(i)))
    out += [(f"evaluate iter {i}", run.log("evaluate", i), run.eval_metrics(i))
            for i in evaluated]
    out += [(f"retention iter {i}", run.log("retention", i), run.retention_metrics(i))
            for i in retention_iterations(cfg)]
    out.append(("report", run.log("report"), run.report / "index.html"))
    return out


def status(run_dir: str | Path, now: float | None = None, workdir: str | Path | None = None
           ) -> dict[str, Any]:
    """The run's state as a JSON-ready dict (see the module docstring). `workdir`:
    Snakemake's working directory, where results/ is elsewhere (--config results_dir)."""
    from rlver import config

    run = layout.Run(run_dir)
    if not run.config.is_file():
        raise RlverInputError(f"{run.config}: not found; {run.root} is not a run folder. "
                              "Fix: pass results/<run> of a started run.")
    now = time.time() if now is None else now
    cfg = config.load(run.config)
    planned = cfg.iterations
    evaluated = config.evaluated_iterations(cfg)
    updates = [i for i in range(planned) if run.update_metrics(i).is_file()]
    evals = [i for i in evaluated if run.eval_metrics(i).is_file()]
    running = _snakemake_running(run, Path(workdir) if workdir else None)
    unfinished = [{"stage": label, "log": str(log), "log_age_s": now - log.stat().st_mtime}
                  for label, log, output in _stages(run, cfg, evaluated)
                  if log.is_file() and not output.exists()]
    nxt = len(updates)
    shards = [s for s in range(cfg.rollout.shards) if run.shard(nxt, s).is_file()]

    ends = sorted(run.update_metrics(i).stat().st_mtime for i in updates)
    # The first iteration's time also holds the set-up: counted only while it is alone.
    gaps = [b - a for a, b in pairwise(ends)] if len(ends) > 1 else (
        [ends[0] - run.config.stat().st_mtime] if ends else [])
    per_iteration = sum(gaps) / len(gaps) if gaps else None
    eta = None
    if per_iteration is not None:
        since = now - ends[-1] if running else 0.0
        eta = max(0.0, per_iteration * (planned - len(updates)) - since)

    train = None
    if updates:
        m = read_json_object(run.update_metrics(updates[-1]), "rerun its update.")
        train = {"iteration": updates[-1], "reward_mean": m["reward_mean"]}

    def evaluation(i: int) -> dict[str, Any]:
        m = read_json_object(run.eval_metrics(i), "rerun its evaluation.")
        return {"iteration": i} | {k: m[k] for k in ("score", "success", "failure", "n")}

    report = run.report / "index.html"
    served = None
    if cfg.simulator.backend == "served":
        from rlver.served.status import served_status

        served = served_status(run, now)
    return {
        "run": run.root.name,
        "run_dir": str(run.root),
        "snakemake_running": running,
        "iterations": {"planned": planned, "done": len(updates),
                       "next_rollout_shards": {"done": len(shards),
                                               "planned": cfg.rollout.shards}},
        "evaluations": {"planned": evaluated, "done": evals},
        "unfinished": unfinished,
        "train_reward": train,
        "evaluation": evaluation(evals[-1]) if evals else None,
        "evaluation_first": evaluation(evals[0]) if evals else None,
        "seconds_per_iteration": per_iteration,
        "eta_seconds": eta,
        "finished": len(updates) == planned and evals == evaluated and report.is_file(),
        "report": str(report) if report.is_file() else None,
        "served_simulator": served,
    }


def to_text(st: dict[str, Any]) -> str:
    """The status as a few lines for a terminal."""
    it, ev = st["iterations"], st["evaluations"]
    state = ("finished" if st["finished"] else
             "Snakemake running" if st["snakemake_running"] else "Snakemake not running")
    lines = [f"run {st['run']} ({st['run_dir']}): {state}",
             f"iterations: {it['done']} of {it['planned']} done"]
    if it["done"] < it["planned"]:
        nxt = it["next_rollout_shards"]
        lines[-1] += (f"; rollouts of iteration {it['done']}: {nxt['done']} of "
                      f"{nxt['planned']} shards")
    lines.append(f"evaluations: {len(ev['done'])} of {len(ev['planned'])} done (iterations "
                 f"{', '.join(map(str, ev['planned']))})")
    verb = "now" if st["snakemake_running"] else "stopped unfinished"
    for u in st["unfinished"]:
        lines.append(f"{verb}: {u['stage']} (log {u['log']}, written "
                     f"{duration(u['log_age_s'])} ago)")
    if st["train_reward"]:
        t = st["train_reward"]
        lines.append(f"train reward: {t['reward_mean']:.3f} (update of iteration "
                     f"{t['iteration']})")
    if st["evaluation"]:
        e, first = st["evaluation"], st["evaluation_first"]
        lines.append(f"evaluation at iteration {e['iteration']}: score {e['score']:.1f}, "
                     f"success {e['success']}/{e['n']}, failure {e['failure']}/{e['n']}"
                     f" (iteration {first['iteration']}: score {first['score']:.1f})")
    if st.get("served_simulator"):
        from rlver.served.status import lines as served_lines

        lines += served_lines(st["served_simulator"])
    lines.append(f"time per iteration: {duration(st['seconds_per_iteration'])}; estimated "
                 f"time left: {duration(st['eta_seconds'])}")
    lines.append(f"report: {st['report']}" if st["report"] else
                 f"report: built at the end; now: rlver report --run-dir {st['run_dir']} "
                 f"--out /tmp/{st['run']}-report")
    return "\n".join(lines)


def to_json(st: dict[str, Any]) -> str:
    return json.dumps(st, indent=1, sort_keys=True)
