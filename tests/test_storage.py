"""Where a run's files live: `results/` and `resources/` placed elsewhere by Snakemake's
`--config results_dir=... resources_dir=...` (the clone stays where it is), and the check
that every rank of a multi-rank job sees the files of its folder."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from rlver import snakemake_config
from rlver.errors import RlverInputError

from .helpers import BIN, TINY, job_counts, snakemake


def test_storage_keys_are_not_overrides() -> None:
    opts = {"experiment": "smoke", "results_dir": "/scratch/r", "resources_dir": "~/res"}
    assert snakemake_config.snakemake_overrides(opts) == ("smoke", None, [])
    results, resources = snakemake_config.storage_dirs(opts)
    assert results == Path("/scratch/r") and resources == Path.home() / "res"
    assert snakemake_config.storage_dirs({}) == (Path("results"), Path("resources"))
    with pytest.raises(RlverInputError, match="--config results_dir: empty. Fix"):
        snakemake_config.storage_dirs({"results_dir": " "})


def test_a_dry_run_plans_every_file_where_the_config_puts_it(tmp_path: Path) -> None:
    work, store = tmp_path / "clone", tmp_path / "scratch"
    work.mkdir()
    res = snakemake(work, "tiny", TINY, args=("-n",),
                    config=(f"results_dir={store / 'results'}",
                            f"resources_dir={store / 'resources'}"), timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"{store}/results/tiny/config.yaml" in res.stderr
    assert f"{store}/resources/models/smollm2-135m-instruct" in res.stderr
    assert f"{store}/resources/personas/generated/train.parquet" in res.stderr
    assert job_counts(res.stderr)["rollout"] == 4
    assert not (work / "results").exists() and not (work / "resources").exists()


def _rank(rank: int, world: int, port: int, folders: list[str], out: dict) -> None:
    import torch

    from rlver.train.shared import check_shared_folder

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        check_shared_folder(Path(folders[rank]), rank, world)
        out[rank] = ""
    except RlverInputError as exc:
        out[rank] = str(exc)
    finally:
        torch.distributed.destroy_process_group()


def _check(folders: list[Path]) -> dict[int, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_rank, args=(len(folders), port, [str(f) for f in folders], out),
                 nprocs=len(folders))
        return dict(out)


@pytest.mark.slow
def test_every_rank_sees_the_update_folder(tmp_path: Path) -> None:
    """Two ranks on one machine see one folder: the check passes and leaves no file."""
    assert _check([tmp_path, tmp_path]) == {0: "", 1: ""}
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_rank_that_does_not_see_it_stops_the_job_with_one_message(tmp_path: Path) -> None:
    """Node-local storage under one path: each node sees its own folder there. Here rank 1
    is given another folder for the same path, as its node's /tmp would be; both ranks
    fail with the same message, naming the folder and the rank."""
    node0, node1 = tmp_path / "node0", tmp_path / "node1"
    node0.mkdir()
    node1.mkdir()
    out = _check([node0, node1])
    assert out[0] and out[0].split(":", 1)[1] == out[1].split(":", 1)[1]
    assert str(node0) in out[0] and "rank 1 on" in out[0] and "results_dir" in out[0]


@pytest.mark.slow
@pytest.mark.long  # the smoke run, about 11 min here: outside make test, run with -m long
@pytest.mark.timeout(3600)
def test_the_smoke_run_with_results_and_resources_elsewhere(tmp_path: Path) -> None:
    """The smoke experiment end to end (about 11 minutes on 2 cores) with its results and
    resources outside the working directory: every file there, none in the clone, and
    `rlver status` and `rlver digest` read the run."""
    import subprocess

    work, store = tmp_path / "clone", tmp_path / "scratch"
    work.mkdir()
    items = (f"results_dir={store / 'results'}", f"resources_dir={store / 'resources'}")
    res = snakemake(work, None, [], config=items, timeout=3600)
    assert res.returncode == 0, res.stderr[-3000:]
    run = store / "results" / "smoke"
    for i in (0, 1):
        for s in (0, 1):
            assert (run / f"iter_{i:04d}/rollouts/shard_{s:03d}.parquet").is_file()
        assert (run / f"iter_{i:04d}/update/metrics.json").is_file()
    for i in (0, 1, 2):
        assert (run / f"iter_{i:04d}/eval/metrics.json").is_file()
    assert (run / "report" / "index.html").is_file()
    assert (store / "resources" / "models" / "smollm2-135m-instruct" / "source.json").is_file()
    assert "sha256: " in (run / "config.yaml").read_text()
    assert not (work / "results").exists() and not (work / "resources").exists()
    env = os.environ | {"PATH": f"{BIN}:{os.environ['PATH']}"}
    status = subprocess.run([str(BIN / "rlver"), "status", str(run), "--workdir", str(work)],
                            capture_output=True, text=True, env=env, check=True)
    assert "iterations: 2 of 2 done" in status.stdout
    again = snakemake(work, None, [], config=items, timeout=600)
    assert "Nothing to be done" in again.stderr
    digest = subprocess.run([str(BIN / "rlver"), "digest", str(run)], capture_output=True,
                            text=True, env=env, check=True)
    (tmp_path / "digest.json").write_text(digest.stdout)  # to compare with another run's
    shutil.rmtree(store)
