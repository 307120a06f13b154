"""bench/scale.py's probes: each runs in a fresh process (`scale.py --probe NAME`) and does
what one of our jobs does, through the stage's own code, filling `out` with its seconds
and bytes. Files a probe reads are evicted from the page cache first (`evict`), so a read
costs the disk as a new job on another node would.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any


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


def _init_distributed(device: str) -> float:
    """torch.distributed for one rank, as the update job sets it up; its seconds."""
    import deepspeed

    from rlver.train.trainer import flush_subnormals

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0")
    flush_subnormals()
    t = time.perf_counter()
    deepspeed.init_distributed(dist_backend="nccl" if device == "cuda" else "gloo")
    return time.perf_counter() - t


def _update_overrides(device: str) -> list[str]:
    """The paper's GRPO algorithm (the probes load their model themselves, and use no
    simulated user); on the CPU without bf16 or ZeRO."""
    return ["retention=none"] + (
        ["algorithm.precision=bf16", "algorithm.zero_stage=2"] if device == "cuda"
        else ["algorithm.precision=fp32", "algorithm.zero_stage=0"])


def _steps(engine: Any, vocab: int, device: str, rows: int, seq: int, out: dict[str, Any]
           ) -> None:
    """Two optimizer steps of next-token loss on `rows` x `seq` random tokens: the first
    (Adam allocates its state) and the one timed (`train_step_s`, tokens trained/s)."""
    import torch

    ids = torch.randint(0, vocab, (rows, seq), generator=torch.Generator().manual_seed(0))
    ids = ids.to(engine.device)
    mask = torch.ones_like(ids)
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(seq - 1), indexing="ij")
    r, c = r.reshape(-1).to(engine.device), c.reshape(-1).to(engine.device)
    target = ids[:, 1:].reshape(-1)
    for key in ("first_step_s", "train_step_s"):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(engine(ids, mask, r, c).float(), target)
        engine.backward(loss)
        engine.step()
        if device == "cuda":
            torch.cuda.synchronize()
        out[key] = time.perf_counter() - t
    out["tokens_trained_per_s"] = rows * seq / out["train_step_s"]


def _save_export_load(engine: Any, state: Path, policy: Path, export: Any, key: str,
                      out: dict[str, Any]) -> Path:
    """The end of an update and the start of the next one: the engine's state saved
    (`state_save_s`; frozen parameters left out, as rlver.train.state does), the policy
    exported by `export(policy)` (`key`), both evicted from the page cache (their bytes),
    then the state loaded back (`state_load_s`). Deletes the state; returns the policy."""
    import shutil

    from rlver.train.adapters import frozen

    shutil.rmtree(state, ignore_errors=True)
    shutil.rmtree(policy, ignore_errors=True)
    t = time.perf_counter()
    engine.save_checkpoint(str(state / "actor"), tag="state",
                           exclude_frozen_parameters=frozen(engine))
    out["state_save_s"] = time.perf_counter() - t
    t = time.perf_counter()
    export(policy)
    out[key] = time.perf_counter() - t
    out["state_bytes"] = evict(state)
    out["export_bytes"] = evict(policy)
    t = time.perf_counter()
    engine.load_checkpoint(str(state / "actor"), tag="state")
    out["state_load_s"] = time.perf_counter() - t
    shutil.rmtree(state)
    return policy


def probe_update(model: Path, device: str, out: dict[str, Any], work: Path, rows: int,
                 seq: int) -> None:
    import shutil

    import deepspeed  # noqa: F401 - what the update job imports, timed as its start
    import torch
    import transformers  # noqa: F401

    from rlver import config as config_mod
    from rlver.models import load_policy
    from rlver.train.engines import PolicyLM, make_engine

    out["imported"] = time.time()
    out["init_distributed_s"] = _init_distributed(device)
    alg = config_mod.compose("paper_grpo_nothink_vanilla", _update_overrides(device),
                             require_user_keys=False).algorithm
    evict(model)
    t = time.perf_counter()
    lm, _ = load_policy(model, "float32")  # as the update job loads it
    out["policy_load_s"] = time.perf_counter() - t
    out["params"] = sum(p.numel() for p in lm.parameters())
    t = time.perf_counter()
    engine = make_engine(PolicyLM(lm), alg, alg.lr, 1, 1)
    out["deepspeed_init_s"] = time.perf_counter() - t
    _steps(engine, lm.config.vocab_size, device, rows, seq, out)

    def export(policy: Path) -> None:
        lm_state = {k.removeprefix("lm."): v for k, v in engine.module.state_dict().items()}
        engine.module.lm.save_pretrained(policy, state_dict=lm_state, safe_serialization=True)

    shutil.rmtree(_save_export_load(engine, work / "state", work / "policy_out", export,
                                    "policy_export_s", out))
    if device == "cuda":
        out["gpu_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30


def probe_update_lora(model: Path, device: str, out: dict[str, Any], work: Path, rows: int,
                      seq: int, rank: int) -> None:
    """The update's set-up, one step, the state's save and load and the exports with a
    LoRA adapter of `rank` on every projection (the update job's code with model.lora)."""
    import shutil

    import torch

    from rlver import config as config_mod
    from rlver import lora
    from rlver.models import merge
    from rlver.train import adapters
    from rlver.train.engines import make_engine

    _init_distributed(device)
    cfg = config_mod.compose("paper_grpo_nothink_vanilla", [
        *_update_overrides(device), "model/lora=r64", f"model.lora.rank={rank}",
        f"model.lora.alpha={2 * rank}"], require_user_keys=False)
    alg = cfg.algorithm
    evict(model)
    torch.manual_seed(0)
    t = time.perf_counter()
    module, _ = adapters.policy(str(model), cfg.model.lora)
    out["policy_load_s"] = time.perf_counter() - t
    out["params"] = sum(p.numel() for p in module.parameters())
    out["adapter_params"] = sum(p.numel() for p in module.parameters() if p.requires_grad)
    t = time.perf_counter()
    engine = make_engine(module, alg, alg.lr, 1, 1)
    out["deepspeed_init_s"] = time.perf_counter() - t
    _steps(engine, module.lm.config.vocab_size, device, rows, seq, out)
    policy = _save_export_load(
        engine, work / "lora_state", work / "lora_policy",
        lambda policy: lora.save_adapter(engine.module.peft, policy, model, 0),
        "adapter_export_s", out)
    merged = work / "lora_merged"
    t = time.perf_counter()
    merge(policy, merged, "bfloat16" if device == "cuda" else "float32")
    out["merge_export_s"] = time.perf_counter() - t
    out["merged_bytes"] = evict(merged)
    for path in (policy, merged):
        shutil.rmtree(path)


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
