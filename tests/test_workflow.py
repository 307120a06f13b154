"""The real workflow end to end: Snakemake, submitit, DeepSpeed, on a tiny config.

Runs in a temporary working directory (snakemake --directory), so results/ and
resources/ of the checkout are never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bench import faults
from rlver import config
from rlver.digest import differences, digest
from rlver.models import link_tree
from rlver.schema import TIMING_COLUMNS

from .helpers import BIN, TINY, job_counts, snakemake

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, base_model) -> Path:
    wd = tmp_path_factory.mktemp("wf")
    # The GGUF conversion is tested by the base_model fixture; reuse its output.
    link_tree(base_model, wd / "resources" / "models" / base_model.name)
    return wd


#: The module's run keeps iteration 0's trainer state (retention would delete it once the
#: last update is done), so that a copy of it can redo that update (the fault cases).
RUN = [*TINY, "algorithm.keep_state_iterations=2"]


@pytest.fixture(scope="module")
def finished_run(workdir) -> Path:
    res = snakemake(workdir, "tiny", RUN)
    assert res.returncode == 0, res.stderr[-3000:]
    return workdir / "results" / "tiny"


@pytest.fixture(scope="module")
def reference(finished_run) -> dict:
    """The finished run's digest, taken before any test touches it."""
    return digest(finished_run)


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


def test_a_block_of_both_iterations_writes_the_per_stage_runs_files(finished_run, reference,
                                                                    workdir, tmp_path):
    """cluster.iterations_per_job=2: the run's two iterations in one block job (`rlver
    block`, as its rule runs it), from the per-stage run's base policy and persona sets;
    its files are the per-stage run's. The long cases of tests/test_resident.py add an
    unexported policy, PPO, vLLM, two ranks, kills and preemption."""
    run = tmp_path / "results" / "tiny"
    config.freeze(config.compose("smoke", [*RUN, "cluster.iterations_per_job=2"], run="tiny"),
                  run / "config.yaml")
    link_tree(finished_run / "iter_0000" / "policy", run / "iter_0000" / "policy")
    personas = next((workdir / "resources" / "personas").glob("*/train.parquet")).parent
    res = subprocess.run(
        [str(BIN / "rlver"), "block", "--config", str(run / "config.yaml"), "--first", "0",
         "--last", "2", "--personas", str(personas / "train.parquet"),
         "--test-personas", str(personas / "test.parquet")],
        capture_output=True, text=True, timeout=900,
        env=os.environ | {"PATH": f"{BIN}:{os.environ['PATH']}"})
    assert res.returncode == 0, res.stderr[-3000:]
    got = digest(run)
    assert differences(reference, got) == []
    assert len(got) == len(reference) > 0


def test_second_run_does_nothing(finished_run, workdir):
    res = snakemake(workdir, "tiny", RUN)
    assert res.returncode == 0
    assert "Nothing to be done" in res.stderr + res.stdout


def _copy_workdir(src: Path, dst: Path) -> Path:
    """A workdir of its own, with the same file times (so Snakemake sees the same finished
    run). Weights and trainer state are hard links: stages replace files by renaming, never
    write into them."""

    def copy(a: str, b: str) -> None:
        if a.endswith((".safetensors", ".pt")):
            os.link(a, b)
        else:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, symlinks=True, copy_function=copy)
    return dst


#: Fault-matrix cases (bench/faults.py) on a copy of the finished run cut back to before
#: the stage: the tail from that stage on is deleted, the workflow is run and killed as the
#: case says, then run again; the rerun must end with the finished run's outputs and write
#: again none of the outputs that were complete before it. The update cases redo
#: iteration 1's update from iteration 0's kept state. bench/faults.py runs every case
#: from scratch.
TAIL_FROM = {
    "rollout": ("iter_0001/rollouts/shard_000.parquet", "iter_0001/update", "iter_0002"),
    "update": ("iter_0001/update", "iter_0002"),
    "evaluate": ("iter_0002/eval",),
    "report": (),
}
FAULT_CASES = {c.name: c for c in faults.CASES}


TAIL_JOBS = {"rollout": {"rollout": 1, "update_0001": 1, "evaluate": 1, "report": 1, "all": 1},
             "update": {"update_0001": 1, "evaluate": 1, "report": 1, "all": 1},
             "evaluate": {"evaluate": 1, "report": 1, "all": 1},
             "report": {"report": 1, "all": 1}}


@pytest.mark.parametrize(("name", "tail", "rerun_from"), [
    ("rollout_1_d1", "rollout", "rollout"),
    ("update_1_export", "update", "update"),
    ("evaluate_2", "evaluate", "evaluate"),
    ("report", "report", "report"),
    ("snakemake_after_1", "update", "evaluate"),  # killed while the last evaluation runs
])
def test_killed_and_rerun_ends_as_the_uninterrupted_run(finished_run, reference, workdir,
                                                        tmp_path, name, tail, rerun_from):
    case = FAULT_CASES.get(name) or faults.Case(name, "snakemake", after_jobs=1)
    copy = _copy_workdir(workdir, tmp_path / "wf")
    run = copy / finished_run.relative_to(workdir)
    for rel in (*TAIL_FROM[tail], "report"):
        path = run / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    got = faults.run_case(case, copy, reference, run_name="tiny", overrides=RUN)
    log = (copy / "snakemake.log").read_text()
    assert got["killed"], log[-3000:]
    assert got["identical"], got["diff"][:10]
    assert got["redone"] == [], got["redone"]
    # the rerun (the log's last job table) ran what depends on the killed stage, no more
    assert job_counts("Job stats:" + log.split("Job stats:")[-1]) == TAIL_JOBS[rerun_from]


@pytest.fixture(scope="module")
def second_run(finished_run, workdir) -> Path:
    """The same seed again, evaluated every second iteration (which changes no rollout),
    through the last update."""
    res = snakemake(workdir, "tiny_again",
                    [*TINY, "evaluation.every=2", "algorithm.keep_state_iterations=0"],
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
    changed = [o for o in RUN if not o.startswith("rollout.max_new_tokens")]
    res = snakemake(workdir, "tiny", [*changed, "rollout.max_new_tokens=20"], args=("-n",))
    assert res.returncode != 0
    assert "rollout.max_new_tokens: frozen 12 -> now 20" in res.stderr
    assert "new run name" in res.stderr


def test_extended_run_adds_one_iteration_and_redoes_nothing(finished_run, workdir, tmp_path):
    """iterations 2 -> 3 on a copy of the finished run, up to the added update: the third
    iteration's jobs run, every file already made stays as it was, the change is recorded."""
    copy = _copy_workdir(workdir, tmp_path / "wf")
    run = copy / finished_run.relative_to(workdir)
    # Trainer state is left out: the added update's retention deletes iteration 0's.
    made = [p for p in run.rglob("*") if p.is_file() and "report" not in p.parts
            and "logs" not in p.parts and "state" not in p.parts]
    before = {p: p.stat().st_mtime_ns for p in made}
    longer = [o for o in RUN if not o.startswith("iterations=")] + ["iterations=3"]
    res = snakemake(copy, "tiny", longer, args=("--until", "update_0002"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert job_counts(res.stderr) == {"rollout": 2, "update_0002": 1}
    assert {p: p.stat().st_mtime_ns for p in made} == before
    assert (run / "iter_0003/policy/model.safetensors").exists()
    changes = config.recorded_changes(run / "config.yaml")
    assert [(c["key"], c["frozen"], c["now"]) for c in changes] == [("iterations", 2, 3)]
    assert "iterations 2 -> 3" in res.stderr
    assert not (run / "iter_0000/update/state").exists()  # keep_state_iterations=2


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


def test_one_tensorboard_run_holds_every_stage(finished_run):
    """Every update, rollout shard and evaluation writes its own event file into the run's
    one folder, and TensorBoard reads them as one run with curves over the iterations."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rlver.io import read_json_object

    folders = {p.parent for p in finished_run.rglob("*tfevents*")}
    assert folders == {finished_run / "tensorboard"}
    assert sorted(p.name for p in (finished_run / "tensorboard").iterdir()) == sorted(
        [f"events.out.tfevents.update.iter_000{i}" for i in (0, 1)]
        + [f"events.out.tfevents.rollout.iter_000{i}.shard_00{s}" for i in (0, 1)
           for s in (0, 1)]
        + [f"events.out.tfevents.evaluate.iter_000{i}" for i in (0, 1, 2)])
    events = EventAccumulator(str(finished_run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()

    def curve(tag: str) -> list[tuple[int, float]]:
        return [(e.step, e.value) for e in events.Scalars(tag)]

    updates = [read_json_object(finished_run / f"iter_000{i}/update/metrics.json", "")
               for i in (0, 1)]
    steps = updates[0]["optimizer_steps"]
    assert [s for s, _ in curve("step/loss")] == list(range(2 * steps))
    assert curve("update/reward_mean") == [
        (i, pytest.approx(m["reward_mean"])) for i, m in enumerate(updates)]
    assert [s for s, _ in curve("rollout/reward_mean")] == [0, 0, 1, 1]  # one per shard
    assert [s for s, _ in curve("rollout/outcome_share/max_turns")] == [0, 0, 1, 1]
    assert [s for s, _ in curve("rollout/reply_length_mean")] == [0, 0, 1, 1]
    scores = [read_json_object(finished_run / f"iter_000{i}/eval/metrics.json", "")["score"]
              for i in (0, 1, 2)]
    assert curve("eval/score") == [(i, pytest.approx(s)) for i, s in enumerate(scores)]
    assert [s for s, _ in curve("eval/success")] == [0, 1, 2]
    assert [s for s, _ in curve("eval/failure")] == [0, 1, 2]


def test_report_loads_in_a_browser(finished_run, tmp_path):
    """The run's report in headless Chromium: no console error, every figure decoded, the
    sections and tables there (tests/browser.py); the screenshot is kept in tmp_path."""
    from . import browser

    page = browser.check_report(finished_run / "report" / "index.html")
    (tmp_path / "report.png").write_bytes(page.screenshot)


#: Replays event files (a job's points, as TensorBoard holds them) through rlver.scalars,
#: each as the job that wrote it: the stage, iteration and shard of its name.
REPLAY = """
import sys
from pathlib import Path
from rlver import scalars
from tests import tracker_points
config_path, *files = sys.argv[1:]
for f in map(Path, files):
    stage, iteration, *shard = f.name.split(".")[3:]
    points = [(t, v, s) for t, s, v in tracker_points.tensorboard(f)]
    lost = scalars.write(config_path, stage, int(iteration[5:]), points,
                         int(shard[0][6:]) if shard else None)
    assert not any(lost.values()), lost
"""


def test_trackers_get_the_points_tensorboard_has(finished_run, tmp_path):
    """W&B (offline) and MLflow (SQLite in the run folder) added to a copy of the finished
    run (where the scalars go is not part of its config's hash); every job's points,
    replayed through rlver.scalars in two processes (iteration 0's jobs, then, the run
    restarted, the others), read back through each library equal the run's TensorBoard
    points, in one W&B run and one MLflow run."""
    import subprocess
    import sys

    from . import tracker_points

    run = tmp_path / "tiny"
    frozen = config.load(finished_run / "config.yaml")
    tracked = [*RUN, "logging.backends=[tensorboard,wandb,mlflow]"]
    config.freeze(config.compose("smoke", tracked, run="tiny"), run / "config.yaml")
    assert config.run_hash(run / "config.yaml") == config.config_hash(frozen)
    files = sorted((finished_run / "tensorboard").iterdir())
    first = [f for f in files if ".iter_0000" in f.name]
    for jobs in (first, [f for f in files if f not in first]):
        res = subprocess.run([sys.executable, "-c", REPLAY, str(run / "config.yaml"),
                              *map(str, jobs)], capture_output=True, text=True,
                             cwd=Path(__file__).parents[1], timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
    tensorboard = tracker_points.tensorboard(finished_run / "tensorboard")
    wandb, wandb_ids = tracker_points.wandb(run)
    assert len(tracker_points.wandb_runs(run)) == len(files) and len(wandb_ids) == 1
    assert tracker_points.same(wandb, tensorboard)
    mlflow, mlflow_ids = tracker_points.mlflow(f"sqlite:///{run / 'mlflow.db'}")
    assert len(mlflow_ids) == 1
    assert tracker_points.same(mlflow, tensorboard)


def test_status_after_the_run_and_mid_run(finished_run, tmp_path, capsys):
    """`rlver status` of the finished run, then of a copy cut back to iteration 1's
    rollouts (shard 1 running), with file times set so the estimate is known."""
    from rlver.cli import main
    from rlver.io import read_json_object
    from rlver.reporting.report import build_report
    from rlver.status import status

    done = status(finished_run)
    assert done["finished"] and not done["unfinished"]
    assert done["iterations"]["done"] == done["iterations"]["planned"] == 2
    assert done["evaluations"] == {"planned": [0, 1, 2], "done": [0, 1, 2]}
    assert done["eta_seconds"] == 0 and done["seconds_per_iteration"] > 0
    last = read_json_object(finished_run / "iter_0001/update/metrics.json", "")
    assert done["train_reward"] == {"iteration": 1, "reward_mean": last["reward_mean"]}
    assert done["evaluation"]["iteration"] == 2
    assert done["evaluation_first"]["iteration"] == 0

    run = _copy_workdir(finished_run, tmp_path / "results" / "tiny")
    for path in ("iter_0001/rollouts/shard_001.parquet", "iter_0001/update/metrics.json",
                 "iter_0002/eval/metrics.json", "logs/update/iter_0001.log",
                 "logs/evaluate/iter_0002.log", "logs/report.log"):
        (run / path).unlink()
    shutil.rmtree(run / "report")
    # The lock a running Snakemake holds in its working directory (the folder above
    # results/): the outputs it may write, first of another run only.
    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.output.lock").write_text("results/other/iter_0000/eval/metrics.json\n")
    assert not status(run)["snakemake_running"]
    (locks / "1.output.lock").write_text("results/tiny/iter_0001/update/metrics.json\n")
    t0 = 1_700_000_000
    os.utime(run / "config.yaml", (t0, t0))
    os.utime(run / "iter_0000/update/metrics.json", (t0 + 100, t0 + 100))
    mid = status(run, now=t0 + 130)
    assert mid["snakemake_running"] and not mid["finished"]
    assert mid["iterations"] == {"planned": 2, "done": 1,
                                 "next_rollout_shards": {"done": 1, "planned": 2}}
    assert mid["evaluations"]["done"] == [0, 1]
    assert [u["stage"] for u in mid["unfinished"]] == ["rollout iter 1 shard 1"]
    assert mid["seconds_per_iteration"] == pytest.approx(100)
    assert mid["eta_seconds"] == pytest.approx(70)  # one more iteration, 30 s into it
    assert mid["evaluation"]["iteration"] == 1 and mid["report"] is None

    assert main(["status", str(run)]) == 0
    text = capsys.readouterr().out
    assert "iterations: 1 of 2 done; rollouts of iteration 1: 1 of 2 shards" in text
    assert "now: rollout iter 1 shard 1" in text
    assert main(["status", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["iterations"]["done"] == 1
    # The report can be built from what a run holds at any time.
    assert build_report(run, tmp_path / "report-now").is_file()
