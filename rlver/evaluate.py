"""Evaluate: the benchmark protocol on the held-out test personas.

The original benchmark: each test persona opens with its own line, emotion starts at
40, the change per turn is clipped to +-10, at most 10 assistant replies; the policy
decodes greedily. Score = mean final emotion; success = final emotion reaching 100;
failure = final emotion below 10. The dialogues use the trajectory schema, so the
report and `rlver score` read them like rollouts. The metrics also go to the run's
TensorBoard (`eval/*` at the iteration, rlver.scalars).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

from rlver import scalars
from rlver.config import derive_seed
from rlver.dialogue import DialogueSpec, close_all, run_dialogues, simulator_instances
from rlver.engines import Engine, SamplingSettings
from rlver.errors import check_index
from rlver.fallbacks import RATE_KEY, fallback_stats
from rlver.layout import Run
from rlver.metrics import benchmark_metrics
from rlver.simulator import health
from rlver.simulator.protocol import ProtocolSettings


def evaluate_policy(
    config_path: str, iteration: int, policy_dir: str, personas_path: str, out_dir: str,
    engine: Optional[Engine] = None,
) -> dict[str, Any]:
    """Stage `evaluate`: benchmark dialogues and metrics.json for one policy.

    `engine`: an engine already holding the policy at `policy_dir` (tests, benchmarks);
    by default one is started and closed after the evaluation. Fails, writing nothing, if
    more of the simulator's turns fell back than simulator.max_fallback_rate."""
    from rlver import config as config_mod
    from rlver.engines import make_engine
    from rlver.io import write_json
    from rlver.models import verified_policy_sha256
    from rlver.personas.schema import read_personas
    from rlver.schema import write_trajectories

    cfg = config_mod.load(config_path)
    check_index("--iteration", iteration, cfg.iterations + 1,
                f"{config_path}'s policies (iterations + 1)", "pass a policy of the run.")
    sha = verified_policy_sha256(policy_dir)
    ev = cfg.evaluation
    own = engine is None
    personas = read_personas(personas_path)[: ev.num_personas]
    specs = [
        DialogueSpec(p, k, f"eval-{p.persona_id}", derive_seed(cfg.seed, "eval", k))
        for k, p in enumerate(personas)
    ]
    run = Run.of_config(config_path)
    health.check_endpoint(cfg.simulator, run)
    if engine is None:
        engine = make_engine(cfg.rollout.engine, policy_dir, cfg.model.dtype,
                             dict(cfg.rollout.vllm_args), cfg.rollout.max_model_len,
                             lora=cfg.model.lora)
    simulators = simulator_instances(cfg.simulator, len(specs), run)
    try:
        dialogues = run_dialogues(
            specs,
            engine,
            simulators,
            ProtocolSettings(ev.initial_emotion, ev.max_delta, ev.max_turns, ev.failure_below),
            SamplingSettings(ev.max_new_tokens, greedy=True, max_sentences=ev.max_sentences),
            cfg.template.system_prompt,
            ev.batch_size,
            label=f"evaluate iter {iteration}",
            iteration=iteration,
            think=cfg.template.name == "think",
            schedule=cfg.rollout.schedule,
            sessions=cfg.rollout.sessions,
            max_user_tokens=cfg.simulator.max_user_tokens,
        )
    finally:
        close_all([*simulators, engine] if own else simulators)
    rows = [r for d in dialogues
            for r in d.to_rows(iteration, 0, cfg.algorithm.format_penalty_reward)]
    stats = fallback_stats(rows)
    health.check_fallback_rate(stats, cfg.simulator, f"evaluate iter {iteration}")
    out = Path(out_dir)
    write_trajectories(out / "dialogues.parquet", rows,
                       config_hash=config_mod.run_hash(config_path), policy_sha256=sha,
                       kind="eval")
    firsts = [r for r in rows if r["sample"] == 0]  # one per dialogue (think: per turn)
    metrics = {"iteration": iteration, "policy_sha256": sha} | benchmark_metrics(
        [r["final_emotion"] for r in firsts], [r["outcome"] for r in firsts],
        [r["num_turns"] for r in firsts], failure_below=ev.failure_below,
    ) | stats
    write_json(out / "metrics.json", metrics)
    scalars.write(run, "evaluate", iteration,
                  scalars.numbers(metrics, "eval", iteration))
    print(f"evaluate iter {iteration}: score {metrics['score']:.1f}, success "
          f"{metrics['success']}/{metrics['n']}, failure {metrics['failure']}/{metrics['n']}, "
          f"simulator fallback rate {metrics[RATE_KEY]:.1%}", file=sys.stderr)
    return metrics
