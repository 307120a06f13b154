"""What one iteration costs: the fixed costs of our stages measured at three model sizes,
fitted against bytes, and extrapolated to Qwen2.5-7B at the paper's settings.

    python bench/scale.py                      # q90m q180m q250m on the CPU (~12 min)
    python bench/scale.py --sizes q90m q450m   # other sizes (SIZES below)
    python bench/scale.py --from-json results/scale/scale.json   # only the model

Every size is a Qwen2-architecture model with random weights made from a config (the
SmolLM2 tokenizer of the test model, so its vocabulary: 49,152), saved as the policy
directory our stages read. Each measurement is a fresh process doing what the stage's
job does, through the stage's own functions, with the files evicted from the page cache
first (posix_fadvise, so a read costs the disk as a new job on another node would):

- rollout job, hf engine: process start + imports, `rlver.engines.make_engine("hf")`
  (loads the policy), tokens generated/s;
- rollout job, vLLM engine: process start + imports, `VLLMEngine(...)` start (the CPU
  defaults of rlver.engines.vllm_cpu: eager), tokens generated/s;
- update job: process start + imports, `rlver.models.load_policy` (policy load), the
  update's DeepSpeed set-up (`rlver.train.engines.make_engine` with its `deepspeed_config`
  of the algorithm),
  one training step (tokens trained/s; a first step before it allocates Adam's state),
  `save_checkpoint` (state save), the policy export (`save_pretrained` of the trained
  weights, as the update's export), `load_checkpoint` of that state (state load);
- submitit's local launcher: submission to job start, and job end to result.

The model part (`extrapolate`) fits each cost as seconds = a + bytes / rate, and prices
one iteration of the paper's PPO and GRPO experiment at 7B with the stated inputs
(`PAPER`: storage bandwidth, GPU throughput, each with its source) for today's design
(fresh jobs each iteration) and for a resident design (engines and state kept in memory).
Prints the tables; the last line is `fixed_cost_share_7b=<GRPO, today's design>`.
Writes scale.json in --out. Peak memory: about 28 bytes a parameter in the update probe
(DeepSpeed fp32 Adam, 16, plus the state being loaded), 7 GB for q250m.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout: the results
sys.path.insert(0, str(ROOT))

#: (hidden, layers, intermediate, attention heads, key/value heads). CPU sizes: head dim 64,
#: spaced by 3x in parameters, the largest one whose update probe stays under ~8 GB.
#: The Qwen2.5 shapes (head dim 128) with this vocabulary are for machines with a GPU.
SIZES: dict[str, tuple[int, int, int, int, int]] = {
    "tiny": (128, 2, 384, 2, 1),
    "q90m": (512, 12, 1536, 8, 2),
    "q180m": (768, 16, 2304, 12, 2),
    "q250m": (768, 20, 3072, 12, 2),
    "q450m": (896, 24, 4864, 14, 2),
    "qwen2.5-1.5b-shape": (1536, 28, 8960, 12, 2),
    "qwen2.5-3b-shape": (2048, 36, 11008, 16, 2),
    "qwen2.5-7b-shape": (3584, 28, 18944, 28, 4),
}
DEFAULT_SIZES = ["q90m", "q180m", "q250m"]


def param_count(size: str, vocab: int = 49152) -> int:
    """Parameters of `size` (untied embeddings, q/k/v biases as Qwen2 has)."""
    hidden, layers, inter, heads, kv = SIZES[size]
    head_dim = hidden // heads
    attention = 2 * hidden * hidden + 2 * hidden * kv * head_dim + hidden + 2 * kv * head_dim
    return 2 * vocab * hidden + layers * (attention + 3 * hidden * inter + 2 * hidden) + hidden


def make_random_model(size: str, out: Path, dtype: str = "float32") -> int:
    """A seeded random Qwen2 model of `size` with the test model's tokenizer, saved as a
    policy directory; returns its parameter count."""
    from bench.models import Shape, random_qwen2

    return random_qwen2(out, Shape(*SIZES[size]), dtype)


def evict(path: Path) -> int:
    """Drop `path`'s files from the page cache (after flushing them); returns their bytes."""
    total = 0
    for f in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        total += f.stat().st_size
    return total


def _prompts(n: int, length: int, vocab: int) -> list[list[int]]:
    import random

    rng = random.Random(0)
    return [[rng.randrange(vocab) for _ in range(length)] for _ in range(n)]


# ------------------------------------------------------------------------ probes (children)


def probe_rollout(engine_name: str, model: Path, device: str, out: dict[str, Any],
                  batch: int, new_tokens: int) -> None:
    import torch  # noqa: F401 - what the rollout job imports, timed as its start
    import transformers  # noqa: F401

    import rlver.rollout  # noqa: F401
    from rlver.engines import SamplingSettings, make_engine
    from rlver.engines.vllm import VLLMEngine

    if engine_name == "vllm":
        from vllm.v1.engine.async_llm import AsyncLLM  # noqa: F401
    out["imported"] = time.time()
    dtype = "bfloat16" if device == "cuda" else "float32"
    evict(model)
    t = time.perf_counter()
    if engine_name == "vllm":
        # Room for this probe's batch only: the CPU default (2 GiB) is sized for sessions.
        args = ({"kv_cache_memory_bytes": 256 << 20} if device == "cpu"
                else {"gpu_memory_utilization": 0.5})
        engine: Any = VLLMEngine(str(model), dtype, args)
    else:
        engine = make_engine("hf", str(model), dtype)
    out["engine_start_s"] = time.perf_counter() - t
    prompts = _prompts(batch, 64, engine.tokenizer.vocab_size)
    settings = SamplingSettings(max_new_tokens=new_tokens)
    kwargs = {"ignore_eos": True} if engine_name == "vllm" else {}
    engine.generate(prompts[:2], SamplingSettings(max_new_tokens=4), [0, 1], **kwargs)  # warm
    t = time.perf_counter()
    sampled = engine.generate(prompts, settings, list(range(batch)), **kwargs)
    seconds = time.perf_counter() - t
    out["generated_tokens"] = sum(len(s.token_ids) for s in sampled)
    out["generate_s"] = seconds
    out["tokens_generated_per_s"] = out["generated_tokens"] / seconds
    engine.close()


def probe_update(model: Path, device: str, out: dict[str, Any], work: Path, rows: int,
                 seq: int) -> None:
    import shutil

    import deepspeed
    import torch
    import transformers  # noqa: F401 - what the update job imports, timed as its start

    from rlver import config as config_mod
    from rlver.models import load_policy
    from rlver.train.engines import PolicyLM, make_engine
    from rlver.train.trainer import flush_subnormals

    out["imported"] = time.time()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0")
    flush_subnormals()
    t = time.perf_counter()
    deepspeed.init_distributed(dist_backend="nccl" if device == "cuda" else "gloo")
    out["init_distributed_s"] = time.perf_counter() - t
    # The algorithm the experiments train with; on the CPU without bf16 or ZeRO.
    over = [f"model.source={model}", "simulator.base_url=http://unused/v1",
            "simulator.model=unused"] + (
        ["algorithm.precision=bf16", "algorithm.zero_stage=2"] if device == "cuda"
        else ["algorithm.precision=fp32", "algorithm.zero_stage=0"])
    alg = config_mod.compose("paper_grpo_nothink_vanilla", over).algorithm
    evict(model)
    t = time.perf_counter()
    lm, _ = load_policy(model, "float32")  # as the update job loads it
    out["policy_load_s"] = time.perf_counter() - t
    out["params"] = sum(p.numel() for p in lm.parameters())
    t = time.perf_counter()
    engine = make_engine(PolicyLM(lm), alg, alg.lr, 1, 1)
    out["deepspeed_init_s"] = time.perf_counter() - t

    vocab = lm.config.vocab_size
    ids = torch.randint(0, vocab, (rows, seq), generator=torch.Generator().manual_seed(0))
    ids = ids.to(engine.device)
    mask = torch.ones_like(ids)
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(seq - 1), indexing="ij")
    r, c = r.reshape(-1).to(engine.device), c.reshape(-1).to(engine.device)
    target = ids[:, 1:].reshape(-1)

    def step() -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        logits = engine(ids, mask, r, c)
        loss = torch.nn.functional.cross_entropy(logits.float(), target)
        engine.backward(loss)
        engine.step()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    out["first_step_s"] = step()  # Adam allocates its state here
    seconds = step()
    out["train_step_s"] = seconds
    out["tokens_trained_per_s"] = rows * seq / seconds

    state = work / "state"
    shutil.rmtree(state, ignore_errors=True)
    t = time.perf_counter()
    engine.save_checkpoint(str(state / "actor"), tag="state")
    out["state_save_s"] = time.perf_counter() - t
    t = time.perf_counter()
    policy = work / "policy_out"
    shutil.rmtree(policy, ignore_errors=True)
    lm_state = {k.removeprefix("lm."): v for k, v in engine.module.state_dict().items()}
    engine.module.lm.save_pretrained(policy, state_dict=lm_state, safe_serialization=True)
    out["policy_export_s"] = time.perf_counter() - t
    out["state_bytes"] = evict(state)
    out["export_bytes"] = evict(policy)
    t = time.perf_counter()
    engine.load_checkpoint(str(state / "actor"), tag="state")
    out["state_load_s"] = time.perf_counter() - t
    shutil.rmtree(state)
    shutil.rmtree(policy)
    if device == "cuda":
        out["gpu_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30


def _job_started() -> float:
    return time.time()


def probe_submitit(folder: Path, out: dict[str, Any]) -> None:
    import submitit

    executor = submitit.AutoExecutor(folder=folder, cluster="local")
    executor.update_parameters(timeout_min=5, gpus_per_node=0, tasks_per_node=1, nodes=1)
    t = time.time()
    job = executor.submit(_job_started)
    started = job.result()
    out["submit_to_start_s"] = started - t
    out["start_to_result_s"] = time.time() - started


def child(a: argparse.Namespace) -> None:
    out: dict[str, Any] = {}
    if a.probe in ("hf", "vllm"):
        probe_rollout(a.probe, Path(a.model), a.device, out, a.batch, a.new_tokens)
    elif a.probe == "update":
        probe_update(Path(a.model), a.device, out, Path(a.work), a.rows, a.seq)
    else:
        probe_submitit(Path(a.work), out)
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("RESULT " + json.dumps(out), flush=True)


def run_probe(probe: str, args: list[str]) -> dict[str, Any]:
    """A probe in a fresh process; its process start + imports are timed from here."""
    t = time.time()
    done = subprocess.run([sys.executable, __file__, "--probe", probe, *args],
                          capture_output=True, text=True, env=os.environ | {
                              "PYTHONPATH": str(ROOT)})
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        # vLLM's root cause sits far above its last traceback: the error lines, then the end.
        errors = [ln for ln in done.stderr.splitlines() if "Error" in ln]
        sys.stderr.write("\n".join(errors[-10:]) + "\n" + done.stderr[-3000:])
        raise SystemExit(f"scale: probe {probe} {' '.join(args)} failed ({done.returncode})")
    out = json.loads(lines[-1][len("RESULT "):])
    out["wall_s"] = time.time() - t
    print(f"scale: probe {probe}: {out['wall_s']:.0f} s", flush=True)
    if "imported" in out:
        out["process_start_imports_s"] = out.pop("imported") - t
    return out


def measure(sizes: list[str], work: Path, device: str, engines: list[str],
            batch: int, new_tokens: int, rows: int, seq: int) -> dict[str, Any]:
    results: dict[str, Any] = {"device": device, "sizes": {},
                               "load_average_at_start": os.getloadavg()}
    sub = run_probe("submitit", ["--work", str(work / "submitit")])
    results["submitit"] = sub
    print(f"scale: submitit local: submit->start {sub['submit_to_start_s']:.2f} s", flush=True)
    for size in sizes:
        model = work / size / "policy"
        if not (model / "config.json").is_file():
            t = time.perf_counter()
            make_random_model(size, model, "bfloat16" if device == "cuda" else "float32")
            print(f"scale: {size}: random model in {time.perf_counter() - t:.0f} s",
                  flush=True)
        r: dict[str, Any] = {"model_bytes": sum(f.stat().st_size for f in model.iterdir())}
        common = ["--model", str(model), "--device", device, "--work", str(work / size)]
        for engine in engines:
            r[engine] = run_probe(engine, [*common, "--batch", str(batch),
                                           "--new-tokens", str(new_tokens)])
        r["update"] = run_probe("update", [*common, "--rows", str(rows), "--seq", str(seq)])
        r["params"] = r["update"]["params"]
        results["sizes"][size] = r
        print(f"scale: {size}: " + json.dumps(r), flush=True)
    return results


# ------------------------------------------------------------------------ the cost model

GB = 1e9
#: Qwen2.5-7B-Instruct (its config.json: hidden 3584, 28 layers, intermediate 18944,
#: vocab 152064, untied embeddings): 7.62e9 parameters.
PARAMS_7B = 7.62e9

#: Stated inputs of the 7B extrapolation, each with its source ([refs] in docs/scale.md).
PAPER: dict[str, tuple[float, str]] = {
    "shared_fs_bytes_per_s": (2 * GB, "stated: shared file system, 2 GB/s"),
    "local_nvme_bytes_per_s": (10 * GB, "stated: node-local NVMe, 10 GB/s"),
    "update_gpus": (32, "paper: 4 nodes x 8 GPUs (config/cluster/slurm_4x8.yaml)"),
    "rollout_gpus": (1, "profiles/slurm/config.yaml: rollout gpu: 1"),
    "dialogues": (32, "config/paper/training.yaml: 32 dialogues a step"),
    "turns": (8, "config/paper/training.yaml: simulator.max_turns 8"),
    "reply_tokens": (512, "config/paper/training.yaml: max_new_tokens 512 (upper bound)"),
    "context_tokens_per_dialogue": (8 * (512 + 150) + 300,
                                    "stated: 8 x (512 reply + ~150 user) + ~300 system"),
    "decode_s_per_token": (0.025, "stated from [v1]: 13 ms/token at 1 request (8B, A100), "
                                  "latency grows past 8; 25 ms at 32"),
    "simulator_s_per_turn": (3.0, "stated: the LLM simulator's reply, ~3 s a turn"),
    "train_flops_per_gpu_s": (0.4 * 989e12, "[d1] H100 989 TFLOP/s bf16 dense x [d2] 40% MFU"),
    "vllm_init_s": (20.0, "[v2] Llama-3-8B: init engine 39.3 s less torch.compile 19.4 s"),
    "vllm_compile_cold_s": (19.4, "[v2] Llama-3-8B: torch.compile 19.4 s on a cache miss"),
    "vllm_compile_warm_s": (9.2, "[v3] Llama-3-8B: Dynamo 5.0 s + cached graphs 4.2 s"),
    "slurm_queue_s": (30.0, "stated: a job's start on an idle partition [s1]"),
    "weight_sync_s": (5.0, "issue 22: verl 4-6 s at 7B ([r1]: 0.8 s broadcast alone)"),
    "resident_checkpoint_every": (5, "RLVER's own code: a checkpoint every 5 steps"),
}


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of ys against xs."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    return my - slope * mx, slope


def fits(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each measured cost against the bytes it moves or the parameters it allocates:
    seconds = a + x * slope by least squares. Where load on the machine made the slope
    come out negative, and for the costs that do not depend on the model (process start
    and imports), a is the smallest measurement (`how: min`): an upper bound of the
    fixed part, the least disturbed by other processes."""
    sizes = list(results["sizes"].values())
    params = [s["params"] for s in sizes]
    model_bytes = [s["model_bytes"] for s in sizes]
    state_bytes = [s["update"]["state_bytes"] for s in sizes]
    export_bytes = [s["update"]["export_bytes"] for s in sizes]
    u = [s["update"] for s in sizes]
    table: dict[str, tuple[list[float], list[float], str]] = {
        "policy load": (model_bytes, [x["policy_load_s"] for x in u], "bytes"),
        "DeepSpeed init": (params, [x["deepspeed_init_s"] for x in u], "params"),
        "state save": (state_bytes, [x["state_save_s"] for x in u], "bytes"),
        "state load": (state_bytes, [x["state_load_s"] for x in u], "bytes"),
        "policy export": (export_bytes, [x["policy_export_s"] for x in u], "bytes"),
        "update process start + imports": (params, [x["process_start_imports_s"] for x in u],
                                           "const"),
    }
    for engine in ("hf", "vllm"):
        if all(engine in s for s in sizes):
            table[f"{engine} engine start"] = (
                model_bytes, [s[engine]["engine_start_s"] for s in sizes], "bytes")
            table[f"{engine} process start + imports"] = (
                params, [s[engine]["process_start_imports_s"] for s in sizes], "const")
    out = {}
    for name, (xs, ys, unit) in table.items():
        a, b = fit(xs, ys)
        how = "fit"
        if unit == "const" or b <= 0:
            a, b, how = min(ys), 0.0, "min"
        out[name] = {"intercept_s": a, "slope_s": b, "per": unit, "how": how,
                     "rate_per_s": (1 / b) if b > 0 else float("inf")}
    return out


def extrapolate(f: dict[str, dict[str, float]], sub: dict[str, float]
                ) -> dict[str, dict[str, Any]]:
    """Seconds by kind and GPU-hours of one iteration at 7B, per experiment and design.

    Intercepts (what does not grow with the model) come from the fits here; bytes move at
    the stated storage bandwidth; the work runs at the cited GPU rates. Queue time is
    wall time but holds no GPU; everything else holds the job's GPUs."""
    P = {k: v for k, (v, _) in PAPER.items()}
    p = PARAMS_7B
    bf16_bytes = 2 * p  # the policy directory (bf16 safetensors), vLLM's weights, export
    state_per_model = 16 * p  # ZeRO mixed-precision Adam: 2 + 2 + 12 bytes a parameter
    ctx_tokens = P["dialogues"] * P["context_tokens_per_dialogue"]
    out: dict[str, dict[str, Any]] = {}

    def a(name: str) -> float:
        return max(0.0, f[name]["intercept_s"]) if name in f else 0.0

    designs = (  # name, resident, update GPUs, state storage bandwidth
        ("today 4x8", False, P["update_gpus"], P["shared_fs_bytes_per_s"]),
        ("today 1x8", False, 8, P["shared_fs_bytes_per_s"]),
        ("today 1x8, state on NVMe", False, 8, P["local_nvme_bytes_per_s"]),
        ("resident 4x8", True, P["update_gpus"], P["shared_fs_bytes_per_s"]),
        ("resident 1x8", True, 8, P["shared_fs_bytes_per_s"]),
    )
    for exp, models in (("GRPO", 1), ("PPO", 2)):  # PPO: actor and critic
        gen_s = P["turns"] * P["reply_tokens"] * P["decode_s_per_token"]
        sim_s = P["turns"] * P["simulator_s_per_turn"]
        fs = P["shared_fs_bytes_per_s"]
        for design, resident, gpus, state_bw in designs:
            train_s = 6 * p * ctx_tokens * models / (P["train_flops_per_gpu_s"] * gpus)
            if resident:
                queue = {}
                fixed = {"rollout: weight sync to the engine": P["weight_sync_s"],
                         "update: state save (every 5th iteration)":
                         models * state_per_model / state_bw / P["resident_checkpoint_every"]}
                held_gpus = {"rollout": gpus, "update": gpus}  # one allocation, colocated
            else:
                queue = {"rollout: queue": P["slurm_queue_s"],
                         "update: queue + submitit": P["slurm_queue_s"]
                         + sub["submit_to_start_s"]}
                fixed = {
                    "rollout: process start + imports": a("vllm process start + imports"),
                    "rollout: vLLM init (profile, KV cache, CUDA graphs)": P["vllm_init_s"],
                    "rollout: torch.compile (shared cache)": P["vllm_compile_warm_s"],
                    "rollout: policy read": bf16_bytes / fs,
                    "update: process start + imports": a("update process start + imports"),
                    "update: policy load": models * (bf16_bytes / fs + a("policy load")),
                    "update: DeepSpeed init": models * (
                        a("DeepSpeed init") + f["DeepSpeed init"]["slope_s"] * p / gpus),
                    "update: state load": models * (state_per_model / state_bw
                                                    + a("state load")),
                    "update: state save": models * (state_per_model / state_bw
                                                    + a("state save")),
                    "update: policy export": models * bf16_bytes / fs + a("policy export"),
                }
                held_gpus = {"rollout": P["rollout_gpus"], "update": gpus}
            work = {"rollout: generate": gen_s, "rollout: simulator": sim_s,
                    "update: train": train_s}
            held = {"rollout": 0.0, "update": 0.0}
            for k, v in (fixed | work).items():
                held[k.split(":")[0]] += v
            gpu_h = sum(held[j] * held_gpus[j] for j in held) / 3600
            fixed_s = sum(queue.values()) + sum(fixed.values())
            work_s = sum(work.values())
            out[f"{exp} {design}"] = {
                "fixed_s": queue | fixed, "work_s": work,
                "fixed_total_s": fixed_s, "work_total_s": work_s,
                "fixed_share": fixed_s / (fixed_s + work_s),
                "gpu_hours_per_iteration": gpu_h, "gpu_hours_per_1000": 1000 * gpu_h,
                "wall_s_per_iteration": fixed_s + work_s,
            }
    return out


def print_measured(results: dict[str, Any]) -> None:
    """The measured table: one column per size."""
    sizes = results["sizes"]
    print(f"\n### Measured on {results['device']} (seconds; rates in tokens/s)\n")
    print("| cost | " + " | ".join(f"{k} ({v['params'] / 1e6:.0f}M)" for k, v in sizes.items())
          + " |")
    print("| --- |" + " ---: |" * len(sizes))
    rows = [("update process start + imports", "update", "process_start_imports_s"),
            ("torch.distributed init (gloo / nccl)", "update", "init_distributed_s"),
            ("policy load (load_policy)", "update", "policy_load_s"),
            ("DeepSpeed init (make_engine)", "update", "deepspeed_init_s"),
            ("state save (save_checkpoint)", "update", "state_save_s"),
            ("state load (load_checkpoint)", "update", "state_load_s"),
            ("policy export (save_pretrained)", "update", "policy_export_s"),
            ("tokens trained/s", "update", "tokens_trained_per_s"),
            ("hf process start + imports", "hf", "process_start_imports_s"),
            ("hf engine start (make_engine)", "hf", "engine_start_s"),
            ("hf tokens generated/s", "hf", "tokens_generated_per_s"),
            ("vLLM process start + imports", "vllm", "process_start_imports_s"),
            ("vLLM engine start (VLLMEngine)", "vllm", "engine_start_s"),
            ("vLLM tokens generated/s", "vllm", "tokens_generated_per_s"),
            ("peak RSS of the update probe (GiB)", "update", "peak_rss_gib")]
    for label, probe, key in rows:
        if all(probe in v for v in sizes.values()):
            print(f"| {label} | " + " | ".join(f"{v[probe][key]:.2f}" for v in sizes.values())
                  + " |")
    print("| policy bytes (GB) | " + " | ".join(f"{v['model_bytes'] / GB:.2f}"
                                              for v in sizes.values()) + " |")
    print("| state bytes (GB) | " + " | ".join(f"{v['update']['state_bytes'] / GB:.2f}"
                                             for v in sizes.values()) + " |")
    sub = results["submitit"]
    print(f"\nsubmitit local launcher: submission to job start {sub['submit_to_start_s']:.2f} s,"
          f" job end to result {sub['start_to_result_s']:.2f} s")


def print_tables(results: dict[str, Any], f: dict[str, dict[str, float]],
                 x: dict[str, dict[str, Any]]) -> None:
    print_measured(results)
    print("\n### Fits: seconds = a + x / rate\n\n| cost | a (s) | rate | x | a from |\n"
          "| --- | ---: | ---: | --- | --- |")
    for name, v in f.items():
        rate = v["rate_per_s"]
        shown = ("-" if rate == float("inf") else f"{rate / GB:.2f} GB/s"
                 if v["per"] == "bytes" else f"{rate:.3g} params/s")
        print(f"| {name} | {v['intercept_s']:.2f} | {shown} | {v['per']} | {v['how']} |")
    print("\n### Qwen2.5-7B, one iteration at the paper's settings (model: PAPER inputs)\n")
    print("| experiment, design | fixed s | work s | fixed share | GPU-h/iter | "
          "GPU-h/1000 iter | wall h/1000 iter |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, v in x.items():
        print(f"| {name} | {v['fixed_total_s']:.0f} | {v['work_total_s']:.0f} | "
              f"{v['fixed_share']:.2f} | {v['gpu_hours_per_iteration']:.2f} | "
              f"{v['gpu_hours_per_1000']:.0f} | {v['wall_s_per_iteration'] / 3.6:.0f} |")
    for name, v in x.items():
        print(f"\n{name}: " + "; ".join(f"{k} {s:.1f}" for k, s in
                                       (v["fixed_s"] | v["work_s"]).items()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES, choices=list(SIZES))
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--engines", nargs="*", default=["hf", "vllm"], choices=["hf", "vllm"])
    p.add_argument("--out", default=str(ROOT / "results" / "scale"))
    p.add_argument("--from-json", help="a scale.json of an earlier run: only the model")
    p.add_argument("--batch", type=int, default=8, help="sequences generated together")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--rows", type=int, default=2, help="sequences of a training step")
    p.add_argument("--seq", type=int, default=256, help="tokens of each")
    # a probe's own process (internal)
    p.add_argument("--probe", choices=["hf", "vllm", "update", "submitit"])
    p.add_argument("--model")
    p.add_argument("--work")
    a = p.parse_args()
    if a.probe:
        child(a)
        return
    out = Path(a.out)
    if a.from_json:
        results = json.loads(Path(a.from_json).read_text())
    else:
        out.mkdir(parents=True, exist_ok=True)
        results = measure(a.sizes, out, a.device, a.engines, a.batch, a.new_tokens,
                          a.rows, a.seq)
        results["command"] = "python " + " ".join(sys.argv)
        results["date"] = time.strftime("%Y-%m-%d")
        results["load_average_at_end"] = os.getloadavg()
    f = fits(results)
    x = extrapolate(f, results["submitit"])
    results |= {"fits": f, "extrapolation_7b": x,
                "inputs": {k: {"value": v, "source": s} for k, (v, s) in PAPER.items()}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps(results, indent=1))
    print_tables(results, f, x)
    print(f"fixed_cost_share_7b={x['GRPO today 4x8']['fixed_share']:.3f}")


if __name__ == "__main__":
    main()
