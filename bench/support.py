"""What the benchmarks and the tests share: the tiny config and the workflow run with it,
a sample trajectory row, a perturbed policy. Tests import `bench` (as they import its
loopback servers); nothing under `bench/` imports `tests`."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

#: Overrides that shrink the smoke experiment to seconds per stage, for tests.
TINY = [
    "iterations=2",
    "personas.num_train=24",
    "personas.num_test=4",
    "rollout.personas_per_iteration=2",
    "rollout.samples_per_persona=2",
    "rollout.shards=2",
    "rollout.batch_size=4",
    "rollout.max_new_tokens=12",
    "simulator.max_turns=2",
    "evaluation.num_personas=2",
    "evaluation.max_turns=2",
    "evaluation.max_new_tokens=12",
    "cluster.cpus_per_task=1",
]


def snakemake(workdir: Path, run: str | None, overrides: list[str], args: tuple[str, ...] = (),
              config: tuple[str, ...] = (), timeout: float = 900
              ) -> subprocess.CompletedProcess[str]:
    """The workflow in `workdir` with profiles/local; `config`: more --config items
    (experiment=..., scale=...). Errors of the Snakefile are printed on stdout: both
    streams end up in `stderr`."""
    run_item = [] if run is None else [f"run={run}"]
    cmd = [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--profile", str(ROOT / "profiles" / "local"), *args,
           "--config", *run_item, *config, "overrides=" + " ".join(overrides)]
    env = os.environ | {"PATH": f"{BIN}:{os.environ['PATH']}"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    res.stderr += res.stdout
    return res


def trajectory_row(i: int = 0) -> dict[str, Any]:
    """A small valid trajectory row (one turn), dialogue `i`."""
    return {
        "iteration": 0, "shard": 0, "dialogue": i, "sample": 0, "persona_id": "p",
        "group_id": "g", "seed": 1,
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
        "input_ids": [1, 2, 3], "loss_mask": [0, 1, 1], "logprobs": [0.0, -0.5, -0.1],
        "emotion_start": 30, "emotion": [35], "delta": [5], "reason": ["+5: kind"],
        "parse_error": [False],
        "truncated": [False], "num_turns": 1, "outcome": "max_turns", "final_emotion": 35,
        "reward": 0.35, "seconds": 0.1,
    }


def perturbed(model: Any) -> Any:
    """A "new policy": `model` with seeded noise on every parameter (the tied embedding
    once: named_parameters lists it once)."""
    import torch

    new = copy.deepcopy(model)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in new.parameters():
            p += 0.02 * torch.randn_like(p)
    return new


def old_and_new(base_model: Path) -> tuple[Any, Any]:
    """The base policy and its perturbed copy."""
    from rlver.models import load_policy

    old, _ = load_policy(base_model)
    return old, perturbed(old)


def update_spec(workdir: Path, base_model: Path, rows: list[dict], name: str,
                *overrides: str) -> object:
    """The UpdateSpec of iteration 0 of a run `name` (the smoke experiment with TINY and
    `overrides`) whose rollouts are `rows`, frozen and written under `workdir`."""
    from rlver import config
    from rlver.io import weights_sha256
    from rlver.models import link_tree
    from rlver.schema import write_trajectories
    from rlver.train import UpdateSpec

    cfg = config.compose("smoke", [*TINY, *overrides], run=name)
    run = workdir / name
    config.freeze(cfg, run / "config.yaml")
    policy = run / "iter_0000" / "policy"
    link_tree(base_model, policy)
    path = run / "iter_0000" / "rollouts" / "shard_000.parquet"
    write_trajectories(path, rows, config_hash=config.config_hash(cfg),
                       policy_sha256=weights_sha256(policy), kind="rollout")
    return UpdateSpec(str(run / "config.yaml"), 0, str(policy), (str(path),),
                      str(run / "iter_0001" / "policy"), str(run / "iter_0000" / "update"))
