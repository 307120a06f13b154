"""The personas stage: write the train and test persona sets a config describes."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from rlver.errors import RlverInputError
from rlver.personas.generator import generate, persona_key
from rlver.personas.rlver_profiles import import_rlver_jsonl
from rlver.personas.schema import read_persona_meta, write_personas


def build_persona_sets(
    cfg: Any, train_out: str | os.PathLike[str], test_out: str | os.PathLike[str]
) -> None:
    """Write the train and test persona sets described by the `personas` config node.

    source=generated: train and test come from two seeds derived from cfg.seed, and no
    test persona repeats a train persona (same name and backstory), so the benchmark is
    held out. source=rlver: the original files are imported whole (the test file must
    carry first_talk) and their sha256 is recorded, so a set traces to its source.
    source=llm: written by the model of `cfg.llm` (rlver.personas.llm); the metadata
    records the model, seed and language.
    """
    from rlver.config import derive_seed
    from rlver.io import sha256_file

    source = str(cfg.source)
    if source == "generated":
        seed = int(cfg.seed)
        train = generate(int(cfg.num_train), derive_seed(seed, "personas", "train"), "train")
        test = generate(
            int(cfg.num_test),
            derive_seed(seed, "personas", "test"),
            "test",
            exclude=frozenset(persona_key(p) for p in train),
        )
        common = {"source": source, "name": str(cfg.name), "seed": str(seed)}
        metas = [
            common | {"split": "train", "count": str(len(train))},
            common | {"split": "test", "count": str(len(test))},
        ]
    elif source == "rlver":
        paths = {}
        for key in ("train_path", "test_path"):
            value = str(getattr(cfg, key, "") or "")
            if not value or value == "???":
                raise RlverInputError(
                    f"config: personas.{key} is not set (source=rlver). Fix: override it, "
                    f"e.g. --config personas.{key}=/path/to/RLVER/data/"
                    f"{key.split('_')[0]}_profile.jsonl."
                )
            paths[key] = Path(value)
        train = import_rlver_jsonl(paths["train_path"])
        test = import_rlver_jsonl(paths["test_path"], require_opening=True)
        metas = [
            {
                "source": source,
                "name": str(cfg.name),
                "split": split,
                "count": str(len(ps)),
                "source_path": str(paths[key]),
                "source_sha256": sha256_file(paths[key]),
            }
            for split, ps, key in (("train", train, "train_path"), ("test", test, "test_path"))
        ]
    elif source == "llm":
        from rlver.personas.llm import build_llm_sets

        train, test, metas = build_llm_sets(cfg)
    else:
        raise RlverInputError(
            f"config: personas.source is {source!r}. Fix: use generated, rlver or llm."
        )
    for out, personas, meta in ((train_out, train, metas[0]), (test_out, test, metas[1])):
        write_personas(out, personas, meta)
        print(
            f"personas: wrote {len(personas)} {meta['split']} personas to {out}",
            file=sys.stderr,
        )


def check_persona_set(cfg: Any, folder: str | os.PathLike[str]) -> None:
    """Refuse to reuse `resources/personas/<name>/` made from a different persona config.

    Persona sets are shared between runs by name; a run asking for another seed, count or
    source under the same name would otherwise silently train on the wrong personas.
    """
    train = Path(folder) / "train.parquet"
    if not train.exists():
        return
    meta = read_persona_meta(train)
    if str(cfg.source) == "generated":
        want = {"source": "generated", "seed": str(cfg.seed), "count": str(cfg.num_train)}
    elif str(cfg.source) == "llm":
        want = {"source": "llm", "seed": str(cfg.seed), "count": str(cfg.num_train),
                "language": str(cfg.language), "model": str(cfg.llm.model)}
    else:
        want = {"source": str(cfg.source), "source_path": str(cfg.train_path)}
    diff = {k: (meta.get(k), v) for k, v in want.items() if meta.get(k) != v}
    if diff:
        shown = ", ".join(f"{k}: made with {a!r}, config asks {b!r}" for k, (a, b) in diff.items())
        raise RlverInputError(
            f"{train}: persona set '{cfg.name}' was made from another persona config "
            f"({shown}). Fix: set personas.name to a new name, or delete {folder}."
        )
