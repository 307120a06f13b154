"""A full disk, for real: a small tmpfs (8 MiB, mounted as root; skipped otherwise) filled to the
last byte. A rollout writing its Parquet and a policy export stop with one message naming
the path and the space, leave nothing at the output, and succeed once space is freed; an
update job's such error reaches the command as its message."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import submitit
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from rlver import config
from rlver.errors import RlverInputError
from rlver.io import atomic_path
from rlver.layout import Run
from rlver.models import link_tree, save_policy
from rlver.personas import build_persona_sets
from rlver.rollout import rollout_shard
from rlver.schema import read_trajectories
from rlver.train.launch import job_results

from .helpers import TINY
from .test_simulator_health import ScriptedPolicy


@pytest.fixture()
def disk(tmp_path):
    """An 8 MiB tmpfs at tmp_path/disk."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (the full disk) needs root")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
                         capture_output=True, text=True, check=False)
    if res.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path) -> Path:
    """Fill `disk` to its last byte; returns the filler, whose removal frees it."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:  # ENOSPC: full
        pass
    finally:
        os.close(fd)
    return filler


def leftovers(disk: Path) -> list[str]:
    return sorted(p.name for p in disk.iterdir() if p.name != "filler")


def test_a_rollout_on_a_full_disk_names_it_and_writes_nothing(tmp_path, disk, base_model):
    cfg = config.compose("smoke", TINY, run="full")
    run = Run(tmp_path / "results" / "full")
    config.freeze(cfg, run.config)
    build_persona_sets(cfg.personas, tmp_path / "train.parquet", tmp_path / "test.parquet")
    link_tree(base_model, run.policy(0))
    out = disk / "shard_000.parquet"
    filler = fill(disk)
    args = (str(run.config), 0, 0, str(run.policy(0)), str(tmp_path / "train.parquet"),
            str(out))
    with pytest.raises(RlverInputError) as exc:
        rollout_shard(*args, engine=ScriptedPolicy())
    msg = str(exc.value)
    assert str(out) in msg and "the disk is full" in msg and "MiB free" in msg, msg
    assert "Fix: free space" in msg
    assert leftovers(disk) == []  # no output, no temporary file
    filler.unlink()
    rollout_shard(*args, engine=ScriptedPolicy())
    assert read_trajectories(out)[0].num_rows == 2  # shard 0 of 2: 2 of the 4 dialogues


def test_an_export_on_a_full_disk_names_it_and_writes_nothing(tmp_path, disk, base_model):
    """The update's export (`save_policy`: weights, tokenizer, their sha256, one rename)
    of a small random model (0.5 MiB of weights, 3.4 MiB of tokenizer) into the 8 MiB
    disk with 6 MiB taken."""
    model = LlamaForCausalLM(LlamaConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, intermediate_size=128))
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    (disk / "filler").write_bytes(b"\0" * (6 * 2**20))
    out = disk / "iter_0001" / "policy"
    with pytest.raises(RlverInputError) as exc:
        save_policy(model, tokenizer, out, iteration=0)
    msg = str(exc.value)
    assert str(out) in msg and "the disk is full" in msg, msg
    assert not out.exists() and leftovers(out.parent) == []
    (disk / "filler").unlink()
    save_policy(model, tokenizer, out, iteration=0)
    assert (out / "model.safetensors").is_file() and (out / "weights.sha256").is_file()


def _export_into_full_disk(path: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(b"\0" * (16 * 2**20))  # more than the 8 MiB disk


def test_a_jobs_full_disk_reaches_the_command_as_its_message(tmp_path, disk):
    """A real submitit job (local executor) that fills the disk: the caller gets the
    job's RlverInputError message with the job's log, not the job's traceback."""
    executor = submitit.AutoExecutor(folder=tmp_path / "jobs", cluster="local")
    executor.update_parameters(timeout_min=5)
    job = executor.submit(_export_into_full_disk, str(disk / "policy"))
    with pytest.raises(RlverInputError) as exc:
        job_results(job)
    msg = str(exc.value)
    assert msg.startswith(f"{disk / 'policy'}: the disk is full"), msg
    assert f"update job {job.job_id}" in msg and "Traceback" not in msg
