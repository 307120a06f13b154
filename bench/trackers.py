"""What the trackers add to a job: seconds of one job's `rlver.scalars.write` in a fresh
process (imports included, as a stage pays them once), per set of `logging.backends`.

    .venv/bin/python bench/trackers.py [--repeats 3] [--points 120]

Each repeat is one job of a fresh run (the first write of a run: W&B's and MLflow's runs
made, MLflow's SQLite tables created) and then a second job of the same run (the tracker
runs found by their ids), each in its own process. `--points` points: an update of the
default run writes about 120 (`update/*` and 18 optimizer steps of `step/*`). W&B offline,
MLflow's local store. Prints the median seconds per backend set, first job and later job,
and last `tracker_job_overhead_s=<later job, all backends, less tensorboard alone>`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

JOB = """
import json, sys
from rlver import scalars
lost = scalars.write(sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4]))
sys.exit(1 if any(lost.values()) else 0)
"""

SETS = ["[tensorboard]", "[tensorboard,wandb]", "[tensorboard,mlflow]",
        "[tensorboard,wandb,mlflow]"]


def job_seconds(config_path: Path, iteration: int, points: list) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", JOB, str(config_path), "update", str(iteration),
                    json.dumps(points)], cwd=ROOT, check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--points", type=int, default=120)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from rlver import config

    rows: dict[str, tuple[float, float]] = {}
    print(f"{'logging.backends':<30}{'first job s':>12}{'later job s':>12}")
    for backends in SETS:
        firsts, laters = [], []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory(prefix="rlver-bench-trackers-") as tmp:
                path = Path(tmp) / "run" / "config.yaml"
                config.freeze(config.compose("default", [f"logging.backends={backends}"],
                                             run="run"), path)
                points = [(f"update/m{k % 40}", 0.5 * k, k // 40) for k in range(args.points)]
                firsts.append(job_seconds(path, 0, points))
                laters.append(job_seconds(path, 1, points))
        rows[backends] = (statistics.median(firsts), statistics.median(laters))
        print(f"{backends:<30}{rows[backends][0]:>12.1f}{rows[backends][1]:>12.1f}", flush=True)
    extra = rows[SETS[-1]][1] - rows[SETS[0]][1]
    print(f"tracker_job_overhead_s={extra:.1f}")


if __name__ == "__main__":
    main()
