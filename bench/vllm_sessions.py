"""Probe for the next step of the multi-turn engine: vLLM streaming-input sessions.

`bench/rollout_speed.py` finds the multi-turn engine at ~0.9 of the single-turn batch on
this CPU. This script asks how much of that a session per dialogue (one resumable vLLM
request whose later turns send only their new tokens; not used by the rollout) would win,
on the same work (`rollout_speed.workload`): it runs our rollout once (`ours`, 128-token
replies, the loopback endpoint without latency), then `repeats` times:

- `sessions`: each dialogue one streaming-input request, its turns of the recorded
  lengths and token counts (the new user part of each recorded prompt; the sampled ids
  are the session's own, so the tokens differ, the work does not);
- `single-turn batched`: the opening prompts, each generating its dialogue's tokens;
- `replay, full prompts`: each dialogue's recorded prompts sent as new requests, one turn
  after the other, exactly as the rollout does (prefix cache), without the simulator.

Each is timed cold (prefix cache reset); the order of the three rotates from repeat to
repeat (this machine's speed drifts within minutes). It prints a table and, per repeat,
each side's fraction of the single-turn run's tokens/s.

    .venv/bin/python bench/vllm_sessions.py [--dialogues 32] [--turns 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent)]
import rollout_speed as rs  # noqa: E402

from rlver.config import derive_seed  # noqa: E402
from rlver.engine import SamplingSettings, VLLMEngine  # noqa: E402
from rlver.rollout import run_dialogues  # noqa: E402

Turn = tuple[list[int], int]  # recorded prompt, tokens sampled


def delta_params(engine: VLLMEngine, tokens: int, seed: int) -> Any:
    """Exactly `tokens` new tokens, per-step outputs (vLLM refuses FINAL_ONLY here)."""
    from vllm.sampling_params import RequestOutputKind

    params = engine._params(SamplingSettings(tokens), seed, ignore_eos=True)
    params.output_kind = RequestOutputKind.DELTA
    return params


async def session(engine: VLLMEngine, turns: list[Turn], seeds: list[int], name: str) -> int:
    """One dialogue as one streaming-input request; returns the tokens it generated."""
    from vllm.engine.protocol import StreamingInput
    from vllm.inputs import TokensPrompt

    turn_done: asyncio.Queue[None] = asyncio.Queue()
    last: list[int] = []

    async def inputs() -> Any:
        previous = 0  # recorded prompt + sampled tokens of the turn before
        for k, ((prompt, n), seed) in enumerate(zip(turns, seeds, strict=True)):
            # The session keeps what it computed; its last sampled token is not computed
            # yet, so it goes again, followed by the recorded prompt's new user part.
            delta = prompt if k == 0 else [last[-1], *prompt[previous:]]
            yield StreamingInput(prompt=TokensPrompt(prompt_token_ids=delta),
                                 sampling_params=delta_params(engine, n, seed))
            await turn_done.get()
            previous = len(prompt) + n

    generated = 0
    async for out in engine.llm.generate(inputs(), delta_params(engine, turns[0][1], seeds[0]),
                                         name):
        step = out.outputs[0]
        last.extend(step.token_ids)
        generated += len(step.token_ids)
        if step.finish_reason is not None:
            turn_done.put_nowait(None)
    return generated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dialogues", type=int, default=32)
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    specs, protocol = rs.workload(str(rs.MODEL), args.dialogues, args.turns)
    system = rs.TemplateConfig().system_prompt
    proc, url = rs.start_endpoint(0.0)
    engine = VLLMEngine(str(rs.MODEL), "float32", {"kv_cache_memory_bytes": 2 << 30})
    try:
        engine.generate([[1, 2, 3]], SamplingSettings(4), [0])  # one-off costs
        sims = [rs.http_simulator(url) for _ in specs]
        engine.reset_prefix_cache()
        t0 = time.perf_counter()
        dialogues = run_dialogues(specs, engine, sims, protocol,
                                  SamplingSettings(args.max_new_tokens), system,
                                  args.dialogues, label="ours", schedule="async")
        ours_s = time.perf_counter() - t0
        for sim in sims:
            sim.close()
        turns = [[(list(t.prompt), len(t.sampled.token_ids)) for t in d.turns]
                 for d in dialogues]
        seeds = [[derive_seed(d.seed, "generate", k) for k in range(len(d.turns))]
                 for d in dialogues]
        lengths = [sum(n for _, n in ts) for ts in turns]
        total = sum(lengths)
        starts = [ts[0][0] for ts in turns]

        async def sessions() -> list[int]:
            return await asyncio.gather(*(
                session(engine, ts, ss, f"session-{i}-{time.time_ns()}")
                for i, (ts, ss) in enumerate(zip(turns, seeds, strict=True))))

        async def replay() -> None:
            async def one(ts: list[Turn], ss: list[int]) -> None:
                for (prompt, n), seed in zip(ts, ss, strict=True):
                    await engine._one(prompt, SamplingSettings(n), seed, ignore_eos=True)

            await asyncio.gather(*(one(ts, ss) for ts, ss in zip(turns, seeds, strict=True)))

        def timed(run: Any) -> tuple[float, Any]:
            engine.reset_prefix_cache()
            t0 = time.perf_counter()
            result = run()
            return time.perf_counter() - t0, result

        rows: list[tuple[int, float, float, float]] = []
        for k in range(args.repeats):
            runs = {"sessions": lambda: engine._run(sessions()),
                    "single": lambda: rs.single_turn(engine, starts, lengths),
                    "replay": lambda: engine._run(replay())}
            # The machine drifts within a repeat: the order rotates so no side always
            # runs first.
            order = list(runs)[k % 3:] + list(runs)[:k % 3]
            seconds: dict[str, float] = {}
            for name in order:
                seconds[name], result = timed(runs[name])
                if name == "sessions" and sum(result) != total:
                    raise RuntimeError(f"sessions generated {sum(result)} tokens, not {total}")
            sess_s, single_s, replay_s = (seconds[n] for n in ("sessions", "single", "replay"))
            rows.append((k + 1, sess_s, single_s, replay_s))
            print(f"# repeat {k + 1} ({', '.join(order)}): sessions {sess_s:.1f} s, "
                  f"single-turn {single_s:.1f} s, replay {replay_s:.1f} s",
                  file=sys.stderr, flush=True)
    finally:
        engine.close()
        proc.terminate()
    print(f"{total} tokens, {sum(len(ts) for ts in turns)} turns; ours (the rollout, with "
          f"the simulator) {ours_s:.1f} s")
    print(f"{'repeat':>6} {'sessions':>9} {'single-turn':>12} {'replay':>8} "
          f"{'sessions/single':>16} {'replay/single':>14}")
    for k, sess_s, single_s, replay_s in rows:
        print(f"{k:6d} {sess_s:8.1f}s {single_s:11.1f}s {replay_s:7.1f}s "
              f"{single_s / sess_s:16.3f} {single_s / replay_s:14.3f}")


if __name__ == "__main__":
    main()
