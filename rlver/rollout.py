"""Rollout: the training dialogues of one iteration's shard, as trajectory rows.

Each iteration draws its personas (seeded), gives each persona's group of dialogues to
one shard, runs them through the dialogue loop (`rlver.dialogue`: the turns, the
schedules, the rows) and writes the shard's trajectories, and its numbers to the run's
TensorBoard (rlver.scalars).
"""

from __future__ import annotations

import random
import sys
from typing import Any, Optional

from rlver import scalars
from rlver.config import derive_seed
from rlver.dialogue import Dialogue, DialogueSpec, close_all, run_dialogues, simulator_instances
from rlver.engines import Engine, SamplingSettings
from rlver.errors import check_index
from rlver.fallbacks import RATE_KEY, fallback_stats
from rlver.layout import Run
from rlver.personas.schema import Persona
from rlver.schema import OUTCOMES
from rlver.simulator import health
from rlver.simulator.protocol import ProtocolSettings


def sample_personas(train: list[Persona], n: int, seed: int, iteration: int) -> list[Persona]:
    """The personas of one iteration: a seeded draw without replacement (with wrap-around
    when the set is smaller than n)."""
    rng = random.Random(derive_seed(seed, "personas", iteration))
    order: list[Persona] = []
    while len(order) < n:
        order += rng.sample(train, len(train))
    return order[:n]


def shard_specs(
    personas: list[Persona], samples_per_persona: int, shards: int, shard: int, seed: int,
    iteration: int, greedy_per_group: int = 0,
) -> list[DialogueSpec]:
    """The dialogues of one shard: persona k goes to shard k % shards, with all its samples
    (a GRPO group never spans shards); the first `greedy_per_group` of a group are greedy."""
    specs = []
    for k, persona in enumerate(personas):
        if k % shards != shard:
            continue
        for j in range(samples_per_persona):
            index = k * samples_per_persona + j
            specs.append(DialogueSpec(
                persona=persona,
                dialogue=index,
                group_id=f"{iteration:04d}-{k:04d}-{persona.persona_id}",
                seed=derive_seed(seed, iteration, "dialogue", index),
                greedy=j < greedy_per_group,
            ))
    return specs


def rollout_shard(
    config_path: str, iteration: int, shard: int, policy_dir: str, personas_path: str,
    out_path: str, engine: Optional[Engine] = None, policy_sha256: Optional[str] = None,
) -> None:
    """Stage `rollout`: write one shard of iteration `iteration`'s training dialogues.

    `engine`: an engine already holding the policy at `policy_dir` (tests, benchmarks,
    resident blocks); by default one is started for this shard and closed after it.
    `policy_sha256`: the weights' sha256 of the engine's policy when `policy_dir` was not
    written (a resident block's policy that is not kept), as its export would record it.
    An HTTP simulator's endpoint is checked first; the shard fails, writing nothing, if
    more of its simulator turns fell back than simulator.max_fallback_rate
    (rlver.simulator.health)."""
    from rlver import config as config_mod
    from rlver.engines import make_engine
    from rlver.models import verified_policy_sha256
    from rlver.personas.schema import read_personas
    from rlver.schema import write_trajectories

    cfg = config_mod.load(config_path)
    ro = cfg.rollout
    check_index("--iteration", iteration, cfg.iterations, f"{config_path}'s iterations",
                "pass an iteration the run trains on.")
    check_index("--shard", shard, ro.shards, f"{config_path}'s rollout.shards",
                "pass one of its shards.")
    policy_sha = policy_sha256 or verified_policy_sha256(policy_dir)
    personas = sample_personas(read_personas(personas_path), ro.personas_per_iteration,
                               cfg.seed, iteration)
    specs = shard_specs(personas, ro.samples_per_persona, ro.shards, shard, cfg.seed, iteration,
                        ro.greedy_per_group)
    sim = cfg.simulator
    run = Run.of_config(config_path)
    health.check_endpoint(sim, run)
    own = engine is None
    if engine is None:
        engine = make_engine(ro.engine, policy_dir, cfg.model.dtype, dict(ro.vllm_args),
                             ro.max_model_len, lora=cfg.model.lora)
    simulators = simulator_instances(sim, len(specs), run)
    sent_before, cached_before = engine.prompt_tokens, engine.cached_prompt_tokens
    try:
        dialogues = run_dialogues(
            specs,
            engine,
            simulators,
            ProtocolSettings(sim.initial_emotion, sim.max_delta, sim.max_turns,
                             sim.failure_below),
            SamplingSettings(ro.max_new_tokens, ro.temperature, ro.top_p,
                             max_sentences=ro.max_sentences),
            cfg.template.system_prompt,
            ro.batch_size,
            label=f"rollout iter {iteration} shard {shard}",
            iteration=iteration,
            think=cfg.template.name == "think",
            schedule=ro.schedule,
            sessions=ro.sessions,
            max_user_tokens=sim.max_user_tokens,
        )
    finally:
        close_all([*simulators, engine] if own else simulators)
    sent, cached = engine.prompt_tokens - sent_before, engine.cached_prompt_tokens - cached_before
    print(f"rollout: {sent} prompt tokens sent to the engine, {cached} of them "
          f"({cached / max(sent, 1):.0%}) reused from its prefix cache or the dialogue's "
          f"session", file=sys.stderr)
    rows = [r for d in dialogues
            for r in d.to_rows(iteration, shard, cfg.algorithm.format_penalty_reward)]
    stats = fallback_stats(rows)
    health.check_fallback_rate(stats, sim, f"rollout iter {iteration} shard {shard}")
    write_trajectories(out_path, rows, config_hash=config_mod.run_hash(config_path),
                       policy_sha256=policy_sha, kind="rollout", extra=stats)
    metrics = shard_metrics(dialogues, rows) | {RATE_KEY: stats[RATE_KEY]}
    scalars.write(run, "rollout", iteration,
                  scalars.numbers(metrics, "rollout", iteration), shard)
    print(f"rollout: wrote {len(rows)} samples of {len(dialogues)} dialogues to {out_path} "
          f"(mean reward {metrics['reward_mean']:.3f}, simulator fallback rate "
          f"{stats[RATE_KEY]:.1%})", file=sys.stderr)


def shard_metrics(dialogues: list[Dialogue], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A shard's numbers for TensorBoard: the mean reward of its samples, the final
    emotion, reply length and share cut at max_new_tokens, turns, and the share of
    dialogues by outcome."""
    replies = [t.sampled for d in dialogues for t in d.turns]
    outcomes = [d.outcome or "error" for d in dialogues]
    return {
        "reward_mean": sum(r["reward"] for r in rows) / len(rows),
        "final_emotion_mean": sum(d.current_emotion for d in dialogues) / len(dialogues),
        "reply_length_mean": sum(len(r.token_ids) for r in replies) / max(1, len(replies)),
        "truncated_share": sum(r.cut for r in replies) / max(1, len(replies)),
        "turns_mean": sum(len(d.emotion) for d in dialogues) / len(dialogues),
        "outcome_share": {o: outcomes.count(o) / len(outcomes) for o in OUTCOMES},
    }
