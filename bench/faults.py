"""The fault matrix: kill the workflow at many moments, rerun it, and check that the rerun
ends with the outputs of an uninterrupted run and redoes nothing that had finished.

    .venv/bin/python bench/faults.py                      # every case (about 1 h here)
    .venv/bin/python bench/faults.py --only rollout,snakemake --workdir /tmp/faults

1. The reference: a small run of the smoke experiment (hf engine, fp32, 2 iterations of
   2 optimizer steps, tiny sizes) run once uninterrupted; its digest (`rlver digest`:
   rollout and eval Parquet columns but timings, every policy's sha256, update and eval
   metrics but timings).
2. Each case starts the same run in a fresh folder and kills it: a stage process kills
   itself (SIGKILL) at a named point (`RLVER_KILL_AT`, rlver/faults.py: inside
   prepare_model, a rollout shard mid-dialogue, an update between optimizer steps, while
   it saves its state, before it renames its exported policy, an evaluation mid-dialogue,
   the report before its rename), or Snakemake itself is SIGKILLed after k finished jobs.
   Then the same command again (after `snakemake --unlock`), and its digest is compared
   with the reference. "redone" counts the outputs that were complete before the rerun
   (on disk, and their job seen to end by Snakemake: a job still running when Snakemake
   was killed is run again, whatever it had written) and that the rerun wrote again.

Prints a table (case, stage, rerun seconds, identical, redone) and last
`faults_survived=K/N redone_finished=R`.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent

from rlver.digest import differences, digest  # noqa: E402
from rlver.models import SOURCE_RECORD  # noqa: E402

RUN = "faults"
OVERRIDES = [
    "iterations=2", "personas.num_train=24", "personas.num_test=4",
    "rollout.personas_per_iteration=2", "rollout.samples_per_persona=2", "rollout.shards=2",
    "rollout.batch_size=4", "rollout.max_new_tokens=12", "simulator.max_turns=3",
    "evaluation.num_personas=2", "evaluation.max_turns=2", "evaluation.max_new_tokens=12",
    "cluster.cpus_per_task=1", "algorithm.mini_batches=2", "algorithm.micro_batch_size=1",
    "algorithm.keep_policies=all",
]


@dataclass(frozen=True)
class Case:
    name: str
    stage: str
    #: RLVER_KILL_AT for a stage killing itself; empty: kill Snakemake after `after_jobs`.
    kill_at: str = ""
    after_jobs: int = 0


CASES = [
    Case("prepare_model", "prepare_model", "prepare_model.before_rename"),
    *(Case(f"rollout_{i}_d{n}", "rollout", f"rollout.dialogue_end@{i}:{n}")
      for i in (0, 1) for n in (1, 2)),
    *(Case(f"update_{i}_step{n}", "update", f"update.step_end@{i}:{n}")
      for i in (0, 1) for n in (1, 2)),
    Case("update_0_state", "update", "update.save_state"),
    *(Case(f"update_{i}_export", "update", f"update.export_before_rename@{i}")
      for i in (0, 1)),
    *(Case(f"evaluate_{i}", "evaluate", f"evaluate.dialogue_end@{i}:1") for i in (0, 1, 2)),
    Case("report", "report", "report.before_rename"),
    *(Case(f"snakemake_after_{k}", "snakemake", after_jobs=k) for k in (2, 5, 8, 11)),
]


def snakemake(workdir: Path, env: dict[str, str], *args: str, run: str = RUN,
              overrides: list[str] = OVERRIDES) -> subprocess.Popen[str]:
    cmd = [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--profile", str(ROOT / "profiles" / "local"), *args,
           "--config", f"run={run}", "overrides=" + " ".join(overrides)]
    log = open(workdir / "snakemake.log", "a")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)


def environment() -> dict[str, str]:
    return os.environ | {"PATH": f"{BIN}:{os.environ['PATH']}",
                         "TORCH_EXTENSIONS_DIR": str(ROOT / ".cache" / "torch_extensions")}


def prepare(workdir: Path, model_cache: Path) -> None:
    """A fresh folder with the converted base model linked in (prepare_model's cases
    excepted), so that each case does not convert the GGUF again."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    if (model_cache / SOURCE_RECORD).is_file():  # else the workflow converts the GGUF
        dest = workdir / "resources" / "models" / "smollm2-135m-instruct"
        shutil.copytree(model_cache, dest, copy_function=os.link)


#: A stage's finished outputs (what Snakemake checks), relative to the run folder.
OUTPUTS = ("config.yaml", "iter_*/rollouts/shard_*.parquet", "iter_*/policy/model.safetensors",
           "iter_*/update/metrics.json", "iter_*/eval/metrics.json",
           "iter_*/eval/dialogues.parquet", "report/index.html")


def incomplete_outputs(workdir: Path) -> set[Path]:
    """The outputs whose jobs Snakemake had started and not seen end (its incomplete
    markers, .snakemake/incomplete/<urlsafe base64 of the path>, split into parts that
    start with '@' when long): a killed Snakemake runs those jobs again, whatever their
    processes had written before they were killed with it."""
    root = workdir / ".snakemake" / "incomplete"
    out = set()
    for marker in root.rglob("*") if root.is_dir() else ():
        if marker.is_file() and marker.name != "migration_underway":
            b64 = "".join(part.removeprefix("@") for part in marker.relative_to(root).parts)
            out.add(workdir / base64.urlsafe_b64decode(b64).decode())
    return out


def finished_outputs(run: Path, unfinished: set[Path] = frozenset()) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every finished output of the run: on disk, and not under an
    output of a job that had not ended (`unfinished`)."""
    out = {}
    for pattern in OUTPUTS:
        for p in run.glob(pattern):
            if any(p == u or u in p.parents for u in unfinished):
                continue
            st = p.stat()
            out[str(p.relative_to(run))] = (st.st_ino, st.st_mtime_ns)
    return out


def was_killed(workdir: Path) -> bool:
    """A stage's kill message, in Snakemake's log or a job's (submitit) log."""
    logs = [workdir / "snakemake.log", *workdir.glob("results/*/iter_*/update/submitit/*.err")]
    return any("killed at" in p.read_text(errors="replace") for p in logs if p.is_file())


def kill_group(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_case(case: Case, workdir: Path, reference: dict, run_name: str = RUN,
             overrides: list[str] = OVERRIDES) -> dict:
    """Kill the run in `workdir` (prepared by the caller: a fresh folder, or a finished run
    with some outputs deleted) as `case` says, run it again, compare with `reference`."""
    env = environment()
    sm = {"run": run_name, "overrides": overrides}
    if case.kill_at:
        proc = snakemake(workdir, env | {"RLVER_KILL_AT": case.kill_at}, **sm)
        proc.wait()
    else:
        proc = snakemake(workdir, env, **sm)
        log = workdir / "snakemake.log"
        while proc.poll() is None:
            done = log.read_text().count("Finished jobid") if log.is_file() else 0
            if done >= case.after_jobs:
                kill_group(proc)
                break
            time.sleep(0.2)
    killed = was_killed(workdir) if case.kill_at else proc.returncode == -signal.SIGKILL
    run = workdir / "results" / run_name
    before = finished_outputs(run, incomplete_outputs(workdir)) if run.is_dir() else {}
    if not case.kill_at:  # a killed Snakemake leaves its lock; a failed job does not
        snakemake(workdir, env, "--unlock", **sm).wait()
    t0 = time.perf_counter()
    rerun = snakemake(workdir, env, **sm)
    rc = rerun.wait()
    seconds = time.perf_counter() - t0
    after = finished_outputs(run) if run.is_dir() else {}
    got = digest(run) if rc == 0 else {}
    diff = differences(reference, got) if rc == 0 else ["rerun failed"]
    redone = sorted(k for k in before if k in after and after[k] != before[k])
    return {"case": case.name, "stage": case.stage, "killed": killed, "rerun_s": seconds,
            "identical": not diff, "diff": diff, "redone": redone}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/rlver-faults"))
    ap.add_argument("--only", default="", help="comma-separated case-name prefixes")
    ap.add_argument("--model-cache", type=Path,
                    default=ROOT / ".cache" / "test-model" / "smollm2-135m-instruct")
    a = ap.parse_args()
    cases = [c for c in CASES if not a.only or any(c.name.startswith(p)
                                                    for p in a.only.split(","))]
    ref_dir = a.workdir / "reference"
    prepare(ref_dir, a.model_cache)
    t0 = time.perf_counter()
    if snakemake(ref_dir, environment()).wait() != 0:
        print(f"reference run failed: {ref_dir / 'snakemake.log'}", file=sys.stderr)
        return 1
    reference = digest(ref_dir / "results" / RUN)
    print(f"reference: {len(reference)} outputs in {time.perf_counter() - t0:.0f} s",
          flush=True)
    print(f"{'case':<22} {'stage':<14} {'killed':>6} {'rerun s':>8} {'identical':>9} "
          f"{'redone':>6}", flush=True)
    results = []
    for case in cases:
        wd = a.workdir / case.name
        prepare(wd, a.model_cache if case.stage != "prepare_model" else Path("/nonexistent"))
        r = run_case(case, wd, reference)
        results.append(r)
        print(f"{r['case']:<22} {r['stage']:<14} {str(r['killed']):>6} {r['rerun_s']:>8.0f} "
              f"{str(r['identical']):>9} {len(r['redone']):>6}", flush=True)
        for line in r["diff"][:5] + [f"redone: {p}" for p in r["redone"][:5]]:
            print(f"    {line}", flush=True)
        if r["identical"] and not r["redone"]:
            shutil.rmtree(a.workdir / case.name, ignore_errors=True)  # policies: disk
    survived = sum(r["identical"] and r["killed"] for r in results)
    redone = sum(len(r["redone"]) for r in results)
    print(f"faults_survived={survived}/{len(results)} redone_finished={redone}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
