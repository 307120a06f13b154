"""Rollout: batched multi-turn dialogues between the policy and simulated users.

Follow one dialogue: the persona's opening line starts the context; each turn the policy
samples a reply (ids + log-probs kept exactly), the simulator feels it (a change and a
reason), the protocol applies the change and decides whether the dialogue ends, and the
simulator speaks the persona's next message, which is appended as template tokens. The
finished dialogue becomes one trajectory row (see `rlver.schema`).

Dialogues that have ended leave the batch; the rest go on. Each dialogue owns its state,
so a reply can never be routed to another dialogue (a defect of the original code).
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from rlver.chat import ChatTokens
from rlver.config import derive_seed
from rlver.engine import Engine, SamplingSettings
from rlver.personas import Persona
from rlver.simulator import Message, SimRequest, Simulator
from rlver.simulator.protocol import ProtocolSettings, reward, step


@dataclass
class Dialogue:
    """The state of one dialogue while it runs."""

    persona: Persona
    dialogue: int
    group_id: str
    seed: int
    emotion_start: int
    messages: list[Message]
    input_ids: list[int]
    loss_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    emotion: list[int] = field(default_factory=list)
    delta: list[int] = field(default_factory=list)
    reason: list[str] = field(default_factory=list)
    parse_error: list[bool] = field(default_factory=list)
    outcome: Optional[str] = None
    seconds: float = 0.0

    @property
    def current_emotion(self) -> int:
        return self.emotion[-1] if self.emotion else self.emotion_start

    def to_row(self, iteration: int, shard: int) -> dict[str, Any]:
        final = self.current_emotion
        return {
            "iteration": iteration,
            "shard": shard,
            "dialogue": self.dialogue,
            "sample": 0,
            "persona_id": self.persona.persona_id,
            "group_id": self.group_id,
            "seed": self.seed,
            "messages": [{"role": m.role, "content": m.content} for m in self.messages],
            "input_ids": self.input_ids,
            "loss_mask": self.loss_mask,
            "logprobs": self.logprobs,
            "emotion_start": self.emotion_start,
            "emotion": self.emotion,
            "delta": self.delta,
            "reason": self.reason,
            "parse_error": self.parse_error,
            "num_turns": len(self.emotion),
            "outcome": self.outcome or "error",
            "final_emotion": final,
            "reward": reward(final),
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class DialogueSpec:
    """What to run: a persona, its group, the dialogue's index and seed."""

    persona: Persona
    dialogue: int
    group_id: str
    seed: int


def run_dialogues(
    specs: list[DialogueSpec],
    engine: Engine,
    simulator: Simulator,
    protocol: ProtocolSettings,
    sampling: SamplingSettings,
    system_prompt: str,
    batch_size: int,
    seed: int,
    label: str = "rollout",
) -> list[Dialogue]:
    """Run every dialogue to its end; returns them in the order of `specs`."""
    chat = ChatTokens(engine.tokenizer, system_prompt)
    dialogues = [
        Dialogue(
            persona=s.persona,
            dialogue=s.dialogue,
            group_id=s.group_id,
            seed=s.seed,
            emotion_start=protocol.initial_emotion,
            messages=[Message("user", s.persona.opening_line)],
            input_ids=chat.start(s.persona.opening_line),
        )
        for s in specs
    ]
    for d in dialogues:
        d.loss_mask = [0] * len(d.input_ids)
        d.logprobs = [0.0] * len(d.input_ids)
    turn = 0
    while True:
        live = [d for d in dialogues if d.outcome is None]
        if not live:
            break
        turn += 1
        for start in range(0, len(live), batch_size):
            _advance(live[start : start + batch_size], turn, start // batch_size, engine,
                     simulator, protocol, sampling, chat, seed)
        done = sum(d.outcome is not None for d in dialogues)
        print(f"{label}: turn {turn}: {done}/{len(dialogues)} dialogues finished",
              file=sys.stderr, flush=True)
    return dialogues


def _advance(
    batch: list[Dialogue],
    turn: int,
    chunk: int,
    engine: Engine,
    simulator: Simulator,
    protocol: ProtocolSettings,
    sampling: SamplingSettings,
    chat: ChatTokens,
    seed: int,
) -> None:
    """One assistant reply and one simulator reaction for each dialogue of `batch`."""
    t0 = time.perf_counter()
    samples = engine.generate([d.input_ids for d in batch], sampling,
                              seed=derive_seed(seed, "generate", turn, chunk))
    tokenizer = engine.tokenizer
    for d, s in zip(batch, samples, strict=True):
        d.input_ids += s.token_ids
        d.loss_mask += [1] * len(s.token_ids)
        d.logprobs += s.logprobs
        text_ids = s.token_ids[:-1] if s.finished else s.token_ids
        reply = tokenizer.decode(text_ids, skip_special_tokens=True).strip()
        d.messages.append(Message("assistant", reply))
    requests = [
        SimRequest(d.persona, tuple(d.messages), d.current_emotion, turn,
                   derive_seed(d.seed, "simulator", turn))
        for d in batch
    ]
    feelings = simulator.feel(requests)
    steps = []
    for d, f in zip(batch, feelings, strict=True):
        st = step(protocol, d.current_emotion, f.delta, turn, farewell=False)
        steps.append(st)
        d.emotion.append(st.emotion)
        d.delta.append(st.delta)
        d.reason.append(f.reason)
        d.parse_error.append(f.parse_error)
    utterances = simulator.speak(requests, [s.emotion for s in steps],
                                 [s.outcome for s in steps])
    seconds = (time.perf_counter() - t0) / len(batch)
    for d, s, st, u, f in zip(batch, samples, steps, utterances, feelings, strict=True):
        d.seconds += seconds
        # The persona's farewell comes from step two, after the protocol's verdict; a
        # verdict of its own (success, failure, turn limit) takes precedence.
        outcome = st.outcome or ("goodbye" if u.farewell else None)
        if f.fatal:
            outcome = "error"
        d.messages.append(Message("user", u.text))
        if outcome is not None:
            d.outcome = outcome
            continue
        history = [{"role": m.role, "content": m.content} for m in d.messages[:-1]]
        tail = tokenizer.decode(s.token_ids[-1:]) if s.finished else ""
        ids = chat.continuation(history, u.text, tail)
        d.input_ids += ids
        d.loss_mask += [0] * len(ids)
        d.logprobs += [0.0] * len(ids)


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
    iteration: int,
) -> list[DialogueSpec]:
    """The dialogues of one shard: persona k goes to shard k % shards, with all its samples
    (a GRPO group never spans shards)."""
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
            ))
    return specs


def rollout_shard(
    config_path: str, iteration: int, shard: int, policy_dir: str, personas_path: str,
    out_path: str,
) -> None:
    """Stage `rollout`: write one shard of iteration `iteration`'s training dialogues."""
    from rlver import config as config_mod
    from rlver.engine import make_engine
    from rlver.io import weights_sha256
    from rlver.personas import read_personas
    from rlver.schema import write_trajectories
    from rlver.simulator import make_simulator

    cfg = config_mod.load(config_path)
    if not 0 <= shard < cfg.rollout.shards:
        raise ValueError(f"shard {shard} outside 0..{cfg.rollout.shards - 1}")
    personas = sample_personas(read_personas(personas_path), cfg.rollout.personas_per_iteration,
                               cfg.seed, iteration)
    specs = shard_specs(personas, cfg.rollout.samples_per_persona, cfg.rollout.shards, shard,
                        cfg.seed, iteration)
    engine = make_engine(cfg.rollout.engine, policy_dir, cfg.model.dtype)
    sim = cfg.simulator
    dialogues = run_dialogues(
        specs,
        engine,
        make_simulator(sim),
        ProtocolSettings(sim.initial_emotion, sim.max_delta, sim.max_turns, sim.failure_below),
        SamplingSettings(cfg.rollout.max_new_tokens, cfg.rollout.temperature, cfg.rollout.top_p),
        cfg.template.system_prompt,
        cfg.rollout.batch_size,
        seed=derive_seed(cfg.seed, iteration, "shard", shard),
        label=f"rollout iter {iteration} shard {shard}",
    )
    rows = [d.to_row(iteration, shard) for d in dialogues]
    write_trajectories(out_path, rows, config_hash=config_mod.config_hash(cfg),
                       policy_sha256=weights_sha256(policy_dir), kind="rollout")
    mean = sum(r["reward"] for r in rows) / len(rows)
    print(f"rollout: wrote {len(rows)} dialogues to {out_path} (mean reward {mean:.3f})",
          file=sys.stderr)
