"""Does the embedded default (`make run`, config/experiment/default.yaml) show learning?

    .venv/bin/python bench/default_learning.py                 # seeds 0, 1, 2 (~15 min each)
    .venv/bin/python bench/default_learning.py --seeds 0 --workdir /tmp/default
    .venv/bin/python bench/default_learning.py --lora          # LoRA adapters (~25 min each)
    .venv/bin/python bench/default_learning.py --lora --seeds 0 --name lr1e-4 \
        --overrides algorithm.lr=1e-4                          # a trial (docs/notes/)

`--lora` trains LoRA adapters of rank 16 on the frozen base instead of every weight, for
12 iterations instead of 6 (`LORA`: model/lora=r64 with rank 16 and alpha 32, the
learning rate tuned for adapters).

Runs the default experiment once per seed with Snakemake (profiles/local, run
`default_s<seed>` under `--workdir`; a finished seed is not redone) and reads each run's
evaluation files: the held-out score of the base policy (iteration 0), of every evaluated
policy, and of the final one. The gain's standard error is the paired one: the same
benchmark personas are scored at both ends, so it is the spread of the per-persona
differences over sqrt(n).

Prints a table (seed, score at each evaluated iteration, gain, its standard error, the
gain in standard errors (goal with --lora: above 2), the share of training replies cut at
the token cap, the run's minutes) and last `default_gain_min=<x>`: the smallest gain over
the seeds (goal >= 5).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent

from rlver.layout import Run  # noqa: E402
from rlver.metrics import paired_gain  # noqa: E402
from rlver.reporting.results_doc import read_curve  # noqa: E402

#: LoRA adapters for --lora: rank 16 on every projection; the learning rate of the trials
#: in docs/notes/2026-12-07-lora.md (full fine-tuning's default: 3e-5). 12 iterations:
#: after its first update an adapter moves the policy less far than full fine-tuning
#: (approx KL 0.004-0.012 an update against 0.014-0.019), and 6 iterations' gains stay
#: within two standard errors of the 16-persona benchmark (so does full fine-tuning's
#: seed 1).
LORA = ["model/lora=r64", "model.lora.rank=16", "model.lora.alpha=32", "algorithm.lr=8e-4",
        "iterations=12"]


def run_seed(workdir: Path, name: str, seed: int, overrides: list[str]) -> None:
    """The default experiment for `seed` with `overrides` in `workdir`, run
    `<name>_s<seed>` (a finished run: nothing to do)."""
    cmd = [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--profile", str(ROOT / "profiles" / "local"),
           "--config", "experiment=default", f"run={name}_s{seed}",
           "overrides=" + " ".join([f"seed={seed}", *overrides])]
    env = os.environ | {"PATH": f"{BIN}:{os.environ['PATH']}"}
    log = workdir / f"{name}_s{seed}.log"
    print(f"seed {seed}: running (log: {log})", file=sys.stderr, flush=True)
    with log.open("a") as f:
        res = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if res.returncode != 0:
        sys.exit(f"seed {seed}: snakemake failed (exit {res.returncode}); see {log}")



def final_emotions(path: Path) -> dict[str, int]:
    """Persona -> final emotion of each benchmark dialogue in an eval dialogues.parquet."""
    rows = pq.read_table(path, columns=["persona_id", "sample", "final_emotion"]).to_pylist()
    return {r["persona_id"]: r["final_emotion"] for r in rows if r["sample"] == 0}


def cut_share(run: Run) -> float:
    """The share of the run's training replies cut at `rollout.max_new_tokens` (every
    assistant turn of every rollout shard)."""
    cut = total = 0
    for path in sorted(run.root.glob("iter_*/rollouts/shard_*.parquet")):
        for flags in pq.read_table(path, columns=["truncated"]).column(0).to_pylist():
            cut, total = cut + sum(flags), total + len(flags)
    return cut / max(1, total)


def seed_scores(run: Run) -> tuple[dict[int, float], float, float, float]:
    """{iteration: score} of the evaluated policies, the gain from the first to the last,
    the gain's paired standard error, and the run's wall seconds (`rlver results-doc`'s
    curve: file times, so a seed finished earlier keeps its own time)."""
    curve = read_curve(run.root)
    scores = dict(curve.scores)
    first, last = min(scores), max(scores)
    _, se, _ = paired_gain(final_emotions(run.eval_dialogues(first)),
                           final_emotions(run.eval_dialogues(last)))
    return scores, scores[last] - scores[first], se, curve.wall_s


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    ap.add_argument("--workdir", type=Path, default=ROOT / "bench-runs" / "default",
                    help="where the runs' results/ go (kept: a finished seed is not redone)")
    ap.add_argument("--lora", action="store_true",
                    help="train LoRA adapters (LORA) instead of every weight")
    ap.add_argument("--overrides", nargs="*", default=[],
                    help="more Hydra overrides, after --lora's (trials)")
    ap.add_argument("--name", default=None,
                    help="the runs' name before _s<seed> (default: default, default_lora)")
    a = ap.parse_args(argv)
    a.workdir.mkdir(parents=True, exist_ok=True)
    name = a.name or ("default_lora" if a.lora else "default")
    overrides = [*(LORA if a.lora else []), *a.overrides]
    rows = []
    for seed in (int(s) for s in a.seeds.split(",")):
        run_seed(a.workdir, name, seed, overrides)
        run = Run(a.workdir / "results" / f"{name}_s{seed}")
        scores, gain, se, seconds = seed_scores(run)
        rows.append((seed, scores, gain, se, cut_share(run), seconds))
        print(f"seed {seed}: {gain:+.1f} (se {se:.1f}) in {seconds / 60:.1f} min",
              file=sys.stderr, flush=True)
    its = sorted({i for _, s, *_ in rows for i in s})
    print(f"{'seed':>4} " + " ".join(f"{'iter ' + str(i):>8}" for i in its)
          + f" {'gain':>6} {'se':>5} {'x se':>5} {'cut':>5} {'minutes':>8}")
    for seed, scores, gain, se, cut, seconds in rows:
        cells = " ".join(f"{scores[i]:8.1f}" if i in scores else f"{'-':>8}" for i in its)
        ratio = gain / se if se > 0 else float("nan")
        print(f"{seed:>4} {cells} {gain:+6.1f} {se:5.1f} {ratio:5.2f} {cut:5.0%}"
              f" {seconds / 60:8.1f}")
    print(f"default_gain_min={min(row[2] for row in rows):.1f}")


if __name__ == "__main__":
    main()
