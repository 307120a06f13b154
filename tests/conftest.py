"""Shared fixtures: the embedded model (prepared once per machine) and small configs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from bench.models import embedded_model

from .helpers import CLUSTER, ROOT, SLURM_DIR, TINY

os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
os.environ.setdefault("DS_ACCELERATOR", "cpu")


#: The slowest files, slowest first (minutes each, measured with `make test`'s two
#: workers). Run first, so that neither worker is left with a long file at the end while
#: the other is idle; `make test` passes --no-loadscope-reorder to keep this order.
SLOW_FILES = ("test_llm_simulator.py", "test_learning.py", "test_update_dist.py",
              "test_workflow.py", "test_slurm.py", "test_engine_vllm.py", "test_update.py",
              "test_rollout.py", "test_served_workflow.py")


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread for what a worker of `make test` computes in its own process: two
    workers of two threads each on 2 cores spin against each other, and an in-process
    generation took 4-10x its time alone (77 s and 142 s against 21 s and 13 s); alone
    one thread generates as fast as two here (memory-bound). Stage jobs set their own."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
    else:
        config.stash[_CLUSTER_BEFORE] = _cluster_running()


#: Whether the loopback Slurm cluster was running when the test session began.
_CLUSTER_BEFORE = pytest.StashKey[bool]()


def _cluster_running() -> bool:
    """Whether the loopback cluster's controller (tests/slurm/cluster.sh) is running."""
    pid = SLURM_DIR / "slurmctld.pid"
    try:
        os.kill(int(pid.read_text()), 0)
    except (OSError, ValueError):
        return False
    return True


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop the loopback Slurm cluster if this session started it (the process that ran
    the whole session: with xdist the controller, after every worker is done), so that
    `make test` leaves no slurmd, slurmctld or munged behind. A cluster that was running
    before the session is someone's own and stays up."""
    if os.environ.get("PYTEST_XDIST_WORKER") or _CLUSTER_BEFORE not in config.stash:
        return
    if not config.stash[_CLUSTER_BEFORE] and _cluster_running():
        subprocess.run([str(CLUSTER), "stop"], check=False, timeout=120)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return SLOW_FILES.index(name) if name in SLOW_FILES else len(SLOW_FILES)

    items.sort(key=rank)  # stable: the order within a file stays


@pytest.fixture(scope="session")
def base_model() -> Path:
    """SmolLM2-135M-Instruct as an HF directory, converted from the package's GGUF once per
    machine (`make test`'s two workers: one converts, the other waits for it)."""
    return embedded_model()


@pytest.fixture(scope="session")
def stub_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A paper-scale model.source for dry runs: a directory holding only config.json (what
    the config check looks for); no stage reads its weights."""
    model = tmp_path_factory.mktemp("models") / "Qwen2.5-7B-Instruct"
    model.mkdir()
    (model / "config.json").write_text("{}\n")
    return model


@pytest.fixture()
def make_tiny_run(tmp_path: Path, base_model: Path):
    """make(*overrides) -> (run dir, persona dir): a frozen tiny config, its persona sets
    and iteration 0's policy, in tmp_path."""
    from rlver import config
    from rlver.models import link_tree
    from rlver.personas import build_persona_sets

    def make(*overrides: str) -> tuple[Path, Path]:
        cfg = config.compose("smoke", [*TINY, *overrides], run="tiny")
        run = tmp_path / "results" / "tiny"
        config.freeze(cfg, run / "config.yaml")
        personas = tmp_path / "personas"
        build_persona_sets(cfg.personas, personas / "train.parquet", personas / "test.parquet")
        link_tree(base_model, run / "iter_0000" / "policy")
        return run, personas

    return make


@pytest.fixture()
def tiny_run(make_tiny_run):
    return make_tiny_run()


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory, base_model) -> list[Path]:
    """Iteration 0's two rollout shards of the tiny config (2 multi-turn dialogues each,
    real rollouts of the base model), written in-process on this host with one torch
    thread, as the workflow's rollout rule runs (`threads: 1`): the log-probs' sums depend
    on the thread count, so the shards equal the workflow's bit for bit."""
    import torch

    from rlver import config
    from rlver.personas import build_persona_sets
    from rlver.rollout import rollout_shard

    root = tmp_path_factory.mktemp("rows")
    cfg = config.compose("smoke", TINY, run="tiny")
    config.freeze(cfg, root / "config.yaml")
    build_persona_sets(cfg.personas, root / "train.parquet", root / "test.parquet")
    paths = [root / f"shard_{shard}.parquet" for shard in (0, 1)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for shard, path in enumerate(paths):
            rollout_shard(str(root / "config.yaml"), 0, shard, str(base_model),
                          str(root / "train.parquet"), str(path))
    finally:
        torch.set_num_threads(threads)
    return paths


@pytest.fixture(scope="session")
def rows(tiny_shards) -> list[dict]:
    """The rows of `tiny_shards`, with rewards spread inside each group so that every
    advantage is non-zero: the input of the update tests that run whole jobs."""
    from rlver.schema import read_trajectories

    out = []
    for path in tiny_shards:
        out += read_trajectories(path)[0].to_pylist()
    for i, row in enumerate(out):
        row["reward"] = 0.2 + 0.6 * (i % 2)
    return out
