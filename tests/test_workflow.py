"""The real workflow end to end: Snakemake, submitit, DeepSpeed, on a tiny config.

Runs in a temporary working directory (snakemake --directory), so results/ and
resources/ of the checkout are never touched.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rlver import config
from rlver.models import link_tree
from rlver.schema import TIMING_COLUMNS

from .helpers import TINY, job_counts, snakemake

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, base_model) -> Path:
    wd = tmp_path_factory.mktemp("wf")
    # The GGUF conversion is tested by the base_model fixture; reuse its output.
    link_tree(base_model, wd / "resources" / "models" / base_model.name)
    return wd


@pytest.fixture(scope="module")
def finished_run(workdir) -> Path:
    res = snakemake(workdir, "tiny", TINY)
    assert res.returncode == 0, res.stderr[-3000:]
    return workdir / "results" / "tiny"


def test_run_produces_the_whole_tree(finished_run):
    run = finished_run
    assert (run / "config.yaml").exists()
    for i in (0, 1):
        for s in (0, 1):
            assert (run / f"iter_{i:04d}/rollouts/shard_{s:03d}.parquet").exists()
        assert (run / f"iter_{i:04d}/update/metrics.json").exists()
    for i in (0, 1, 2):
        assert (run / f"iter_{i:04d}/policy/model.safetensors").exists()
        assert (run / f"iter_{i:04d}/eval/metrics.json").exists()
    for name in ("index.html", "learning_curve.png", "outcomes.png",
                 "emotion_trajectories.png"):
        assert (run / "report" / name).exists()
    assert (run / "logs" / "update" / "iter_0000.log").exists()


def test_second_run_does_nothing(finished_run, workdir):
    res = snakemake(workdir, "tiny", TINY)
    assert res.returncode == 0
    assert "Nothing to be done" in res.stderr + res.stdout


def _copy_workdir(src: Path, dst: Path) -> Path:
    """A workdir of its own, with the same file times (so Snakemake sees the same finished
    run). Weights are hard links: stages replace files by renaming, never write into them."""

    def copy(a: str, b: str) -> None:
        if a.endswith(".safetensors"):
            os.link(a, b)
        else:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, symlinks=True, copy_function=copy)
    return dst


def test_deleted_shard_redoes_only_what_depends_on_it(finished_run, workdir, tmp_path):
    """On a copy of the finished run: the module's run stays as the other tests expect."""
    copy = _copy_workdir(workdir, tmp_path / "wf")
    run = copy / finished_run.relative_to(workdir)
    victim = run / "iter_0001/rollouts/shard_000.parquet"
    keep = [run / "iter_0001/rollouts/shard_001.parquet", run / "iter_0000/eval/metrics.json",
            run / "iter_0001/eval/metrics.json", run / "iter_0000/update/metrics.json"]
    before = {p: p.stat().st_mtime_ns for p in keep}
    victim.unlink()
    res = snakemake(copy, "tiny", TINY)
    assert res.returncode == 0, res.stderr[-3000:]
    assert job_counts(res.stderr) == {"rollout": 1, "update_0001": 1, "evaluate": 1,
                                      "report": 1, "all": 1}
    assert victim.exists()
    assert {p: p.stat().st_mtime_ns for p in keep} == before
    assert (finished_run / "iter_0001/rollouts/shard_000.parquet").exists()


@pytest.fixture(scope="module")
def second_run(finished_run, workdir) -> Path:
    """The same seed again, evaluated every second iteration (which changes no rollout),
    through the last update."""
    res = snakemake(workdir, "tiny_again", [*TINY, "evaluation.every=2"],
                    args=("--until", "update_0001"))
    assert res.returncode == 0, res.stderr[-3000:]
    return workdir / "results" / "tiny_again"


def test_policies_between_evaluations_are_deleted_once_used(second_run):
    """algorithm.keep_policies=evaluated (the default): iteration 1 is not evaluated, so
    its policy goes once its rollouts and update are done; 0 and the final 2 stay."""
    assert (second_run / "iter_0001/rollouts/shard_000.parquet").exists()
    assert (second_run / "iter_0001/update/metrics.json").exists()
    assert not (second_run / "iter_0001/policy").exists()
    for i in (0, 2):
        assert (second_run / f"iter_{i:04d}/policy/model.safetensors").exists()


def test_same_seed_gives_identical_rollouts(finished_run, second_run):
    other = second_run
    for i in (0, 1):
        for s in (0, 1):
            name = f"iter_{i:04d}/rollouts/shard_{s:03d}.parquet"
            a, b = pq.read_table(finished_run / name), pq.read_table(other / name)
            cols = [c for c in a.column_names if c not in TIMING_COLUMNS]
            assert a.select(cols).equals(b.select(cols)), name


def test_changed_config_is_refused_with_the_differing_keys(finished_run, workdir):
    changed = [o for o in TINY if not o.startswith("rollout.max_new_tokens")]
    res = snakemake(workdir, "tiny", [*changed, "rollout.max_new_tokens=20"], args=("-n",))
    assert res.returncode != 0
    assert "rollout.max_new_tokens: frozen 12 -> now 20" in res.stderr
    assert "new run name" in res.stderr


def test_extended_run_adds_one_iteration_and_redoes_nothing(finished_run, workdir, tmp_path):
    """iterations 2 -> 3 on a copy of the finished run, up to the added update: the third
    iteration's jobs run, every file already made stays as it was, the change is recorded."""
    copy = _copy_workdir(workdir, tmp_path / "wf")
    run = copy / finished_run.relative_to(workdir)
    made = [p for p in run.rglob("*") if p.is_file() and "report" not in p.parts
            and "logs" not in p.parts]
    before = {p: p.stat().st_mtime_ns for p in made}
    longer = [o for o in TINY if not o.startswith("iterations=")] + ["iterations=3"]
    res = snakemake(copy, "tiny", longer, args=("--until", "update_0002"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert job_counts(res.stderr) == {"rollout": 2, "update_0002": 1}
    assert {p: p.stat().st_mtime_ns for p in made} == before
    assert (run / "iter_0003/policy/model.safetensors").exists()
    changes = config.recorded_changes(run / "config.yaml")
    assert [(c["key"], c["frozen"], c["now"]) for c in changes] == [("iterations", 2, 3)]
    assert "iterations 2 -> 3" in res.stderr


def test_finished_ppo_run_is_refused_more_iterations(workdir):
    """The last update of a plan keeps no critic: a PPO run cannot get more iterations once
    that update is done (a dry run on a frozen run whose last update left its metrics)."""
    ppo = [*TINY, "algorithm=ppo", "rollout.samples_per_persona=1"]
    run = workdir / "results" / "ppo_done"
    config.freeze(config.compose("smoke", ppo, run="ppo_done"), run / "config.yaml")
    (run / "iter_0001" / "update").mkdir(parents=True)
    (run / "iter_0001" / "update" / "metrics.json").write_text("{}\n")
    res = snakemake(workdir, "ppo_done", [*ppo, "iterations=3"], args=("-n",))
    assert res.returncode != 0
    assert "kept no critic" in res.stderr and "iterations: 2 -> 3" in res.stderr
    assert not (run / "config_changes.yaml").exists()


def test_unknown_key_is_named(workdir):
    res = snakemake(workdir, "bad", ["rollout.shardz=3"], args=("-n",))
    assert res.returncode != 0 and "rollout.shardz" in res.stderr
    assert not (workdir / "results" / "bad").exists()


def test_missing_model_path_is_named(workdir):
    res = snakemake(workdir, "bad", ["model.source=/no/such/model"], args=("-n",))
    assert res.returncode != 0
    assert "model.source" in res.stderr and "/no/such/model" in res.stderr
    assert not (workdir / "results" / "bad").exists()
