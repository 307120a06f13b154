"""PPO with LoRA policies: a LoRA critic (an adapter of its own on a frozen copy of the
base, and a trained value head) against a full critic (every weight of its backbone
trained), on the CPU.

    .venv/bin/python bench/lora_critic.py                      # ~40 min on 2 cores
    .venv/bin/python bench/lora_critic.py --iterations 3       # quicker, less to learn from

Runs the same PPO run twice with Snakemake (profiles/local): `paper_ppo_nothink_vanilla`
at `scale=cpu` with LoRA adapters of rank 16 on the policy (`RUN`), once per
`model.lora.critic`, and reads what each cost and whether its critic learned:

- time: the updates' seconds (update/metrics.json), and the run's wall time;
- memory: the update jobs' peak resident memory (their processes sampled every 0.2 s);
- bytes written per iteration: the carried state (update/state, DeepSpeed's checkpoints
  of the policy's and the critic's engines) and the critic (update/critic) of the newest
  iteration that kept them, and the policy (the adapter);
- learning: each update's value loss and explained variance (the critic's values against
  the returns, before the update's steps).

Prints a table and last `lora_critic_state_ratio=<full critic's bytes / LoRA critic's>`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

#: The run: the paper's PPO at CPU scale with LoRA of rank 16; the critic's learning rate
#: raised for the CPU run's few steps (the paper's 5e-6 hardly moves a fresh value head in
#: a few updates), the same for both critics.
RUN = ["scale=cpu", "model/lora=r64", "model.lora.rank=16", "model.lora.alpha=32",
       "algorithm.lr=3e-4", "algorithm.critic_lr=5e-5",
       # the last update writes no state: keep its predecessor's, whose bytes are read
       "algorithm.keep_state_iterations=2"]


def _bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def _sample_rss(marker: str, stop: threading.Event, peak: list[int]) -> None:
    """The largest resident memory of the processes whose command line holds `marker`
    (the update job's submitit folder), summed per sample."""
    while not stop.is_set():
        total = 0
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                if marker in cmd and "submitit" in cmd:
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1]) * 1024
            except OSError:
                continue
        peak[0] = max(peak[0], total)
        time.sleep(0.2)


def run(workdir: Path, critic: str, iterations: int) -> dict:
    name = f"ppo_lora_critic_{critic}"
    cmd = [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--profile", str(ROOT / "profiles" / "local"), "--config",
           "experiment=paper_ppo_nothink_vanilla", f"run={name}",
           "overrides=" + " ".join([*RUN, f"iterations={iterations}",
                                    f"evaluation.every={iterations}",
                                    f"model.lora.critic={critic}"])]
    env = os.environ | {"PATH": f"{BIN}:{os.environ['PATH']}"}
    run_dir = workdir / "results" / name
    stop, peak = threading.Event(), [0]
    sampler = threading.Thread(target=_sample_rss, args=(str(run_dir), stop, peak),
                               daemon=True)
    sampler.start()
    t0 = time.monotonic()
    log = workdir / f"{name}.log"
    with log.open("a") as f:
        res = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    wall = time.monotonic() - t0
    stop.set()
    sampler.join()
    if res.returncode != 0:
        sys.exit(f"{name}: snakemake failed (exit {res.returncode}); see {log}")
    metrics = [json.loads((run_dir / f"iter_{i:04d}" / "update" / "metrics.json").read_text())
               for i in range(iterations)]
    kept = max(i for i in range(iterations)
               if (run_dir / f"iter_{i:04d}" / "update" / "state").exists())
    update = run_dir / f"iter_{kept:04d}" / "update"
    return {
        "critic": critic, "wall_s": wall, "peak_rss": peak[0],
        "update_s": [m["seconds"] for m in metrics],
        "value_loss": [m["value_loss"] for m in metrics],
        "explained_variance": [m["explained_variance"] for m in metrics],
        "state_bytes": _bytes(update / "state"), "critic_bytes": _bytes(update / "critic"),
        "policy_bytes": _bytes(run_dir / f"iter_{iterations:04d}" / "policy"),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--workdir", type=Path, default=ROOT / "bench-runs" / "lora_critic",
                    help="where the runs' results/ go (kept)")
    a = ap.parse_args(argv)
    a.workdir.mkdir(parents=True, exist_ok=True)
    rows = [run(a.workdir, critic, a.iterations) for critic in ("lora", "full")]
    print("| critic | update s (each) | run min | update peak RSS GB | state MB | critic MB "
          "| policy MB | value loss (each) | explained variance (each) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    for r in rows:
        each = " ".join(f"{s:.0f}" for s in r["update_s"])
        vl = " ".join(f"{v:.4f}" for v in r["value_loss"])
        ev = " ".join(f"{v:.2f}" for v in r["explained_variance"])
        print(f"| {r['critic']} | {each} | {r['wall_s'] / 60:.1f} | {r['peak_rss'] / 1e9:.2f} "
              f"| {r['state_bytes'] / 1e6:.1f} | {r['critic_bytes'] / 1e6:.1f} "
              f"| {r['policy_bytes'] / 1e6:.1f} | {vl} | {ev} |")
    (a.workdir / "lora_critic.json").write_text(json.dumps(rows, indent=1))
    written = {r["critic"]: r["state_bytes"] + r["critic_bytes"] for r in rows}
    print(f"lora_critic_state_ratio={written['full'] / max(1, written['lora']):.1f}")


if __name__ == "__main__":
    main()
