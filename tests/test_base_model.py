"""The base model is what the config says: a prepared model folder records its source and
its weights' sha256 (`source.json`); a folder prepared from another source, or from a
source changed since, is refused with one message, never reused; a frozen run continues
only on the weights it was frozen with (`model.sha256`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rlver import config
from rlver.errors import RlverInputError
from rlver.models import SOURCE_RECORD, prepare_model, prepared_sha256

from .helpers import TINY, snakemake


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory, base_model: Path) -> tuple[Path, Path]:
    """Two small random-weight model folders (bench/scale.py's `tiny` shape), different
    weights, the test model's tokenizer."""
    from bench.scale import make_random_model

    root = tmp_path_factory.mktemp("sources")
    a, b = root / "a", root / "b"
    make_random_model("tiny", a)
    make_random_model("tiny", b)
    _change_weights(b)
    return a, b


def _change_weights(model: Path) -> None:
    """Replace the weights file with one whose last byte differs (a new file, as a
    download or copy over the old one makes)."""
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    tmp = weights.with_suffix(".tmp")
    tmp.write_bytes(bytes(data))
    os.replace(tmp, weights)


def test_the_prepared_folder_records_its_source(sources, tmp_path: Path) -> None:
    a, _ = sources
    out = tmp_path / "models" / "mini"
    prepare_model(str(a), out)
    record = json.loads((out / SOURCE_RECORD).read_text())
    sha = (out / "weights.sha256").read_text().strip()
    assert record["source"] == str(a) and record["weights_sha256"] == sha
    assert prepared_sha256(out, str(a)) == sha
    assert prepared_sha256(tmp_path / "models" / "absent", str(a)) is None


def test_another_source_under_the_same_name_is_refused(sources, tmp_path: Path) -> None:
    a, b = sources
    out = tmp_path / "mini"
    prepare_model(str(a), out)
    with pytest.raises(RlverInputError) as err:
        prepared_sha256(out, str(b))
    text = str(err.value)
    assert str(out) in text and repr(str(a)) in text and repr(str(b)) in text
    assert "Fix: give this model a model.name of its own" in text


def test_a_source_changed_since_is_refused(sources, tmp_path: Path) -> None:
    a, _ = sources
    src = tmp_path / "src"
    src.mkdir()
    for f in a.iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "mini"
    prepare_model(str(src), out)
    _change_weights(src)
    with pytest.raises(RlverInputError, match=r"changed since it was prepared.*Fix: restore"):
        prepared_sha256(out, str(src))


def test_a_folder_without_a_record_is_refused(sources, tmp_path: Path) -> None:
    a, _ = sources
    out = tmp_path / "mini"
    prepare_model(str(a), out)
    (out / SOURCE_RECORD).unlink()
    with pytest.raises(RlverInputError, match=f"no {SOURCE_RECORD}.*Fix: delete"):
        prepared_sha256(out, str(a))


def _run(workdir: Path, source: Path, *args: str):
    return snakemake(workdir, "mini", [*TINY, f"model.source={source}", "model.name=mini",
                                       "model.dtype=float32"],
                     args=("-n", *args), config=("model=local_path",), timeout=300)


def test_the_workflow_refuses_a_model_prepared_from_another_source(sources, tmp_path: Path
                                                                   ) -> None:
    """`snakemake` with model.source changed under the same model.name: one message naming
    the folder and both sources, no traceback, nothing written."""
    a, b = sources
    prepare_model(str(a), tmp_path / "resources" / "models" / "mini")
    res = _run(tmp_path, b)
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.splitlines() if "prepared from" in ln]
    assert len(lines) == 1 and str(b) in lines[0] and "Fix:" in lines[0], res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "results").exists()
    assert _run(tmp_path, a).returncode == 0  # the source it was prepared from: planned


def test_a_frozen_run_continues_only_on_its_base_models_weights(sources, tmp_path: Path
                                                                ) -> None:
    """The frozen config records the prepared weights' sha256; prepared again from the
    same source after the weights changed, the run is refused, naming model.sha256."""
    a, _ = sources
    src = tmp_path / "src"
    src.mkdir()
    for f in a.iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    model = tmp_path / "resources" / "models" / "mini"
    prepare_model(str(src), model)
    cfg = config.compose("smoke", [*TINY, f"model.source={src}", "model.name=mini",
                                   "model.dtype=float32"], run="mini")
    cfg.model.sha256 = prepared_sha256(model, str(src))
    frozen = tmp_path / "results" / "mini" / "config.yaml"
    config.freeze(cfg, frozen)
    assert f"sha256: {cfg.model.sha256}" in frozen.read_text()
    assert config.run_hash(frozen) == config.config_hash(config.compose(
        "smoke", [*TINY, f"model.source={src}", "model.name=mini", "model.dtype=float32"],
        run="mini"))  # the sha is not hashed: outputs carry the same config hash
    assert _run(tmp_path, src).returncode == 0
    _change_weights(src)
    prepare_model(str(src), model)  # deleted and prepared again, by hand or the workflow
    res = _run(tmp_path, src)
    assert res.returncode != 0
    assert "model.sha256: frozen" in res.stderr and "Traceback" not in res.stderr
