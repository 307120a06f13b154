"""vLLM's torch.compile cache is shared by every iteration's policy (rlver.engines.vllm)."""

from pathlib import Path

import pytest

from rlver.engines.vllm import compile_cache_dir
from rlver.models import link_tree


@pytest.fixture
def policies(tmp_path: Path, base_model: Path) -> list[Path]:
    dirs = [tmp_path / f"iter_{i:04d}" / "policy" for i in range(2)]
    for d in dirs:
        link_tree(base_model, d)
    return dirs


def test_iterations_share_the_cache_and_vllm_itself_would_not(policies):
    from vllm.config import ModelConfig

    a, b = (compile_cache_dir(str(p), {"model": str(p), "dtype": "bfloat16"}) for p in policies)
    assert a == b
    # vLLM's own key has the model's path in it: a new policy directory, a new compile.
    hashes = {ModelConfig(model=str(p), dtype="float32").compute_hash() for p in policies}
    assert len(hashes) == 2


def test_other_architecture_or_arguments_get_their_own_cache(policies, tmp_path, base_model):
    p = str(policies[0])
    base = compile_cache_dir(p, {"model": p, "dtype": "bfloat16"})
    assert compile_cache_dir(p, {"model": p, "dtype": "float32"}) != base
    other = tmp_path / "other"
    link_tree(base_model, other)
    config = other / "config.json"
    text = config.read_text().replace('"num_hidden_layers": 30', '"num_hidden_layers": 2')
    config.unlink()  # a hard link: write a new file, not through the link
    config.write_text(text)
    assert compile_cache_dir(str(other), {"model": str(other), "dtype": "bfloat16"}) != base
