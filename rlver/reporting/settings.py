"""The report's configuration table: the settings that shaped the run, in words (where it
ran, the model and its size, the simulated user), then the config keys behind them."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from rlver import layout

#: Config values shown under the settings (dotted keys).
KEYS = [
    "iterations",
    "personas.source",
    "simulator.difficulty",
    "simulator.initial_emotion",
    "simulator.max_turns",
    "rollout.personas_per_iteration",
    "rollout.samples_per_persona",
    "rollout.shards",
    "rollout.temperature",
    "rollout.max_new_tokens",
    "rollout.max_sentences",
    "evaluation.num_personas",
    "evaluation.initial_emotion",
    "evaluation.max_turns",
    "evaluation.max_new_tokens",
    "evaluation.max_sentences",
    "evaluation.every",
    "algorithm.name",
    "algorithm.lr",
    "algorithm.clip_ratio",
    "template.name",
]


def lookup(cfg: dict[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def rows(cfg: dict[str, Any], run_dir: Path) -> list[tuple[str, str]]:
    """(setting, value) rows: scale, model, simulator, then `KEYS`."""
    return [("scale", scale(cfg, run_dir)), ("sizes", sizes(cfg)),
            ("model", model(cfg, run_dir)), ("simulator", simulator(cfg)),
            *((key, str(lookup(cfg, key))) for key in KEYS)]


def scale(cfg: dict[str, Any], run_dir: Path) -> str:
    """Where the update ran and what ran there, e.g. `one machine, CPU only: 135M-parameter
    model, heuristic simulator`."""
    cl = cfg["cluster"]
    gpus = int(cl["nodes"]) * int(cl["gpus_per_node"])
    where = (f"{cl['nodes']} node(s) x {cl['gpus_per_node']} GPUs ({cl['launcher']})" if gpus
             else "one machine, CPU only" if cl["launcher"] == "local"
             else f"{cl['nodes']} node(s), CPU only ({cl['launcher']})")
    count = parameters(run_dir)
    size = f"{_size(count)}-parameter model" if count else f"model {cfg['model']['name']}"
    sim = "heuristic" if cfg["simulator"]["backend"] == "heuristic" else "LLM"
    return f"{where}: {size}, {sim} simulator"


def sizes(cfg: dict[str, Any]) -> str:
    """Which files set the run's counts: the experiment as written, or shrunk by a scale."""
    experiment = f"config/experiment/{cfg['experiment']}.yaml"
    if cfg["scale"] == "paper":
        return f"{experiment} as written (scale=paper: not shrunk)"
    return f"{experiment} shrunk by config/scale/{cfg['scale']}.yaml (scale={cfg['scale']})"


def model(cfg: dict[str, Any], run_dir: Path) -> str:
    """The base model, its size and source; with `model.lora`, the adapters trained on it
    (a LoRA run learns through far fewer weights: a reader comparing runs must see it)."""
    m = cfg["model"]
    count = parameters(run_dir)
    size = f"{_size(count)} parameters, " if count else ""
    text = f"{m['name']} ({size}{m['dtype']}) from {m['source']}"
    lora = m.get("lora")
    if lora:
        critic = f"; PPO critic: {lora['critic']}" if cfg["algorithm"]["name"] == "ppo" else ""
        text += (f"; trained as LoRA adapters of rank {lora['rank']} (alpha {lora['alpha']}) "
                 f"on {', '.join(lora['target_modules'])}{critic}")
    return text


def simulator(cfg: dict[str, Any]) -> str:
    s = cfg["simulator"]
    what = {"heuristic": "heuristic (rules and lexicons, no LLM)",
            "llm_http": f"LLM {s['model']} at {s['base_url']}",
            "llm_vllm": f"LLM {s['model']} (in-process vLLM)",
            "served": f"LLM {s.get('serve', {}).get('model_path')} served by the workflow "
                      f"(vLLM, {s.get('serve', {}).get('replicas')} server(s))",
            }.get(s["backend"], s["backend"])
    return f"{what}, {s['difficulty']}"


def parameters(run_dir: Path) -> int | None:
    """The parameters of the run's first policy on disk, from its safetensors headers
    (shapes only; no weight is read); None if no policy is left."""
    run = layout.Run(run_dir)
    for i in run.iterations():
        files = sorted(run.policy(i).glob("*.safetensors"))
        if files:
            return sum(_header_parameters(f) for f in files)
    return None


def _header_parameters(path: Path) -> int:
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")


def _size(count: int) -> str:
    return f"{count / 1e9:.1f}B" if count >= 1e9 else f"{count / 1e6:.0f}M"
