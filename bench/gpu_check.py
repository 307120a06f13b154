"""The CUDA paths of one training iteration, run and timed on a machine with a GPU.

    python bench/gpu_check.py --workdir /tmp/gpu --model DIR
    python bench/gpu_check.py --workdir /tmp/gpu --random-from DIR   # config + tokenizer only
    python bench/gpu_check.py --fixed-costs               # the cost model's GPU side (<8 min)
    python bench/gpu_check.py --fixed-costs --device cpu --tiny   # its dry run on a CPU

`--fixed-costs` times the fixed costs of docs/scale.md (process start + imports, vLLM and
hf engine start, policy load, DeepSpeed init at bf16 / ZeRO-2, state save and load,
policy export, submitit's submission) and the work (tokens generated and trained a
second) with bench/scale.py's probes, on the largest of its random-weight Qwen2 shapes
whose update fits the GPU (about 20 bytes a parameter; nothing is downloaded), and
writes scale.json in --workdir (default results/gpu_check). Compare its numbers with the
cost model's inputs (`rlver budget --experiment paper_grpo_think_vanilla --inputs`);
`python bench/scale.py --from-json <that scale.json> --update-data` makes its fits the
model's measured inputs.

Stages, each the real stage function on its own files (no Snakemake, no Slurm):
1. `rollout`: the hf engine on the GPU, GRPO groups, the heuristic simulator;
2. the token-exact check: every stored log-prob against the policy's recomputed one;
3. `update`: the DeepSpeed job (submitit's local launcher, nccl, one GPU) at the
   experiment's precision and ZeRO stage (bf16, ZeRO-2 for the paper experiments);
4. `evaluate`: the greedy benchmark on the updated policy.

`--random-from DIR` builds a randomly initialised model from DIR's config.json and
tokenizer (seeded), for machines that cannot hold or fetch real weights: the same
shapes and compute as the real model, so the timings hold; the replies are noise (they
rarely end before max_new_tokens) and the rewards mean nothing. Prints a table and
writes `gpu_check.json` in the workdir. The vLLM backend is checked only if vllm imports.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
sys.path.insert(0, str(ROOT))


def random_model(src: Path, out: Path, dtype: str) -> None:
    """A seeded random model with `src`'s architecture and tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from rlver.models import torch_dtype

    torch.manual_seed(0)
    cfg = AutoConfig.from_pretrained(src)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch_dtype(dtype))
    if (src / "generation_config.json").is_file():  # its end-of-turn ids
        model.generation_config = GenerationConfig.from_pretrained(src)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)


def logprob_check(rows: list[dict[str, Any]], policy: Path, dtype: str,
                  temperature: float) -> dict[str, float]:
    """Largest and mean |stored - recomputed| log-prob over all sampled tokens."""
    import torch

    from rlver.algorithms import token_logprobs
    from rlver.models import load_policy

    model, _ = load_policy(policy, dtype)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    diffs = []
    with torch.no_grad():
        for r in rows:
            ids = torch.tensor([r["input_ids"]], device=model.device)
            lp = token_logprobs(model(input_ids=ids).logits, ids, temperature)[0].cpu()
            mask = torch.tensor(r["loss_mask"], dtype=torch.bool)
            mask[0] = False
            diffs.append((lp[mask] - torch.tensor(r["logprobs"])[mask]).abs())
    d = torch.cat(diffs)
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean()), "tokens": int(d.numel())}


def fixed_costs(workdir: Path, device: str, tiny: bool) -> None:
    """bench/scale.py's probes at the largest size that fits this machine."""
    import torch

    sys.path.insert(0, str(ROOT / "bench"))
    import scale

    if tiny:
        size = "tiny"
    else:
        free = (torch.cuda.get_device_properties(0).total_memory if device == "cuda"
                else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        # The update: ~20 bytes a parameter in memory; on disk the policy, its export and
        # the DeepSpeed state (~16 bytes a parameter).
        disk = shutil.disk_usage(next(d for d in [workdir, *workdir.parents]
                                      if d.exists())).free
        fits = [n for n in scale.SIZES if n != "tiny"
                and 20 * scale.param_count(n) < 0.8 * free
                and 20 * scale.param_count(n) < 0.8 * disk]
        size = max(fits, key=scale.param_count)
    print(f"gpu_check: fixed costs on {device}, size {size} "
          f"({scale.param_count(size) / 1e9:.2f}B parameters)", flush=True)
    engines = ["hf", "vllm"]
    try:
        import vllm  # noqa: F401
    except ImportError:
        engines = ["hf"]
        print("gpu_check: vllm does not import: hf engine only", flush=True)
    workdir.mkdir(parents=True, exist_ok=True)
    results = scale.measure([size], workdir, device, engines, batch=32, new_tokens=64,
                            rows=4, seq=1024 if device == "cuda" else 128)
    if "vllm" in engines and device == "cuda":
        # The next iteration's policy: another directory, the same architecture, so its
        # engine start finds the compiled graphs (rlver.engines.vllm.compile_cache_dir).
        from rlver.models import link_tree

        policy = workdir / size / "policy"
        link_tree(policy, workdir / size / "policy_next")
        second = scale.run_probe("vllm", ["--model", str(workdir / size / "policy_next"),
                                          "--device", device, "--work", str(workdir / size),
                                          "--batch", "32", "--new-tokens", "64"])
        results["vllm_next_iteration"] = second
        print(f"gpu_check: vLLM engine start, next iteration's policy: "
              f"{second['engine_start_s']:.1f} s (first: "
              f"{results['sizes'][size]['vllm']['engine_start_s']:.1f} s)", flush=True)
    (workdir / "scale.json").write_text(json.dumps(results, indent=1))
    scale.print_measured(results)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fixed-costs", action="store_true",
                   help="time the fixed costs of docs/scale.md instead of one iteration")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                   help="--fixed-costs: where (cpu: a dry run of the script)")
    p.add_argument("--tiny", action="store_true", help="--fixed-costs: the tiny size")
    a0, rest = p.parse_known_args()
    if a0.fixed_costs:
        work = Path(rest[rest.index("--workdir") + 1]) if "--workdir" in rest else (
            ROOT / "results" / "gpu_check")
        fixed_costs(work, a0.device, a0.tiny)
        return
    p.add_argument("--workdir", required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="a Hugging Face model directory")
    src.add_argument("--random-from", help="config.json + tokenizer: a random model of it")
    p.add_argument("--experiment", default="paper_grpo_nothink_vanilla")
    p.add_argument("overrides", nargs="*", help="more Hydra overrides (after the defaults)")
    a = p.parse_args()

    import torch

    from rlver import config as config_mod
    from rlver.evaluate import evaluate_policy
    from rlver.personas import build_persona_sets
    from rlver.rollout import rollout_shard
    from rlver.schema import read_rows
    from rlver.train import UpdateSpec, run_update

    work = Path(a.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    gpu = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if gpu else "cpu"
    result: dict[str, Any] = {"device": device, "torch": torch.__version__}
    print(f"gpu_check: {device}, torch {torch.__version__}", flush=True)

    model = Path(a.model) if a.model else work / "model"
    dtype = "bfloat16" if gpu else "float32"
    if a.random_from:
        t = time.perf_counter()
        random_model(Path(a.random_from), model, dtype)
        print(f"gpu_check: random model in {time.perf_counter() - t:.1f} s", flush=True)
    build_persona_sets(config_mod.compose("smoke").personas, work / "train.parquet",
                       work / "test.parquet")
    overrides = [
        "model=local_path", f"model.source={model}", "model.name=gpu-check",
        f"model.dtype={dtype}", "simulator=heuristic", "rollout=default", "cluster=local",
        "retention=none",
        f"cluster.gpus_per_node={int(gpu)}", "iterations=1",
        "rollout.personas_per_iteration=8", "rollout.samples_per_persona=4",
        "rollout.batch_size=32", "rollout.max_new_tokens=128", "simulator.max_turns=4",
        "evaluation.num_personas=32", "evaluation.batch_size=32",
        "evaluation.max_new_tokens=128", "evaluation.max_turns=4",
        *([] if gpu else ["algorithm.precision=fp32", "algorithm.zero_stage=0"]),
        *a.overrides,
    ]
    cfg = config_mod.compose(a.experiment, overrides, run="gpu-check")
    config_path = work / "config.yaml"
    config_mod.freeze(cfg, config_path)
    result["settings"] = {
        "experiment": a.experiment, "dtype": dtype, "zero_stage": cfg.algorithm.zero_stage,
        "precision": cfg.algorithm.precision, "dialogues": 32,
        "turns": cfg.simulator.max_turns, "max_new_tokens": cfg.rollout.max_new_tokens,
    }
    table = []

    t = time.perf_counter()
    rollout = work / "rollout.parquet"
    rollout_shard(str(config_path), 0, 0, str(model), str(work / "train.parquet"), str(rollout))
    seconds = time.perf_counter() - t
    rows = read_rows([rollout])
    tokens = sum(sum(r["loss_mask"]) for r in rows)
    result["rollout"] = {"seconds": seconds, "sampled_tokens": tokens,
                         "tokens_per_s": tokens / seconds}
    table.append(("rollout (hf engine)", seconds, f"{tokens} tokens, {tokens / seconds:.0f}/s"))

    t = time.perf_counter()
    check = logprob_check(rows, model, dtype, cfg.rollout.temperature)
    result["logprob_check"] = check
    table.append(("log-prob check", time.perf_counter() - t,
                  f"max |d| {check['max_abs']:.4f}, mean {check['mean_abs']:.5f}"))

    t = time.perf_counter()
    new_policy, update_dir = work / "policy_1", work / "update"
    try:
        metrics = run_update(UpdateSpec(str(config_path), 0, str(model), (str(rollout),),
                                        str(new_policy), str(update_dir)))
    finally:
        for log in sorted((update_dir / "submitit").glob("*_0_log.*")):
            print(f"--- {log.name} (last lines)\n" + "\n".join(
                log.read_text(errors="replace").splitlines()[-15:]), flush=True)
    seconds = time.perf_counter() - t
    keep = ("optimizer_steps", "seconds", "tokens_per_s", "num_tokens", "loss", "grad_norm")
    result["update"] = {"wall_seconds": seconds} | {k: metrics[k] for k in keep}
    table.append((f"update (DeepSpeed ZeRO-{cfg.algorithm.zero_stage}, "
                  f"{cfg.algorithm.precision})", seconds,
                  f"{metrics['optimizer_steps']} steps, {metrics['tokens_per_s']:.0f} "
                  f"tokens/s in training, job {metrics['seconds']:.1f} s"))

    t = time.perf_counter()
    ev = evaluate_policy(str(config_path), 1, str(new_policy), str(work / "test.parquet"),
                         str(work / "eval"))
    seconds = time.perf_counter() - t
    result["evaluate"] = {"seconds": seconds, "score": ev["score"]}
    table.append(("evaluate (greedy)", seconds, f"{ev['n']} dialogues"))

    try:
        import vllm

        result["vllm"] = vllm.__version__
    except ImportError:
        result["vllm"] = "not installed"
    table.append(("vllm", 0.0, result["vllm"]))

    if gpu:
        result["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    (work / "gpu_check.json").write_text(json.dumps(result, indent=1))
    print(f"\n| stage on {device} | seconds | |\n| --- | ---: | --- |")
    for name, s, what in table:
        print(f"| {name} | {s:.1f} | {what} |")


if __name__ == "__main__":
    main()
