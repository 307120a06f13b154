"""The dialogue loop of rollout and evaluation: policy and simulated users, without barriers.

Follow one dialogue: the persona's opening line starts the context; each turn the policy
samples a reply (ids + log-probs kept exactly), the simulator feels it (a change and a
reason), the protocol applies the change and decides whether the dialogue ends, and the
simulator speaks the persona's next message, which is appended as template tokens.

No turn is a barrier. Two schedules (`rollout.schedule`):

- `async` (an engine serving concurrent requests: vllm): every dialogue is its own task.
  The moment its simulator has answered, its next request goes to the engine, while
  other dialogues are still generating or waiting on their simulator. With `nothink`
  (`rollout.sessions`), a dialogue keeps one engine session across its turns: each turn
  sends only its new tokens (see `rlver.engines.vllm.VLLMEngine`).
- `batched` (hf; vllm when reruns must be byte-identical): dialogues go in fixed batches
  of `batch_size`, and the engine generates for one batch while the simulator answers the
  others. The batches and their order are fixed, so a rerun is byte-identical.

In both, simulator calls of all waiting dialogues run together (`SimulatorPool`). Each
dialogue owns its state, so a reply can never be routed to another dialogue (a defect of
the original code).

Rows (see `rlver.schema`): `nothink` gives one row per dialogue, the whole token sequence
with one loss-mask span per reply. `think` (think-then-say) gives one row per assistant
turn: the context the policy saw (earlier thinking removed) + that turn's sampled ids,
carrying the dialogue's reward, or the format penalty if its think block is malformed.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Optional

from rlver import faults
from rlver.chat import ChatTokens, split_think
from rlver.config import derive_seed
from rlver.config_checks import SCHEDULES
from rlver.engines import ContextFull, Engine, Sampled, SamplingSettings
from rlver.personas.schema import Persona
from rlver.simulator import Feeling, Message, SimRequest, Simulator, Utterance
from rlver.simulator.protocol import ProtocolSettings, Step, reward, step


@dataclass(frozen=True)
class TurnSample:
    """One assistant turn: the context the policy saw and what it sampled."""

    prompt: list[int]
    sampled: Sampled
    well_formed: bool  # think mode: the think block's format


@dataclass
class Dialogue:
    """The state of one dialogue while it runs."""

    persona: Persona
    dialogue: int
    group_id: str
    seed: int
    emotion_start: int
    messages: list[Message]
    #: What the policy sees next turn. nothink: the whole sequence, sampled ids included.
    context: list[int]
    think: bool = False
    #: Decoded greedily (rollout.greedy_per_group), with log-probs at the run's temperature.
    greedy: bool = False
    turns: list[TurnSample] = field(default_factory=list)
    emotion: list[int] = field(default_factory=list)
    delta: list[int] = field(default_factory=list)
    reason: list[str] = field(default_factory=list)
    parse_error: list[bool] = field(default_factory=list)
    outcome: Optional[str] = None
    seconds: float = 0.0

    @property
    def current_emotion(self) -> int:
        return self.emotion[-1] if self.emotion else self.emotion_start

    def sequence(self) -> tuple[list[int], list[int], list[float]]:
        """nothink: (input_ids, loss_mask, logprobs) of the whole dialogue. The context
        grew by appending, so each turn's prompt extends the previous turn's sequence."""
        if not self.turns:
            return list(self.context), [0] * len(self.context), [0.0] * len(self.context)
        ids: list[int] = []
        mask: list[int] = []
        logprobs: list[float] = []
        for t in self.turns:
            gap = t.prompt[len(ids) :]
            ids += gap + list(t.sampled.token_ids)
            mask += [0] * len(gap) + [1] * len(t.sampled.token_ids)
            logprobs += [0.0] * len(gap) + list(t.sampled.logprobs)
        return ids, mask, logprobs

    def to_rows(self, iteration: int, shard: int,
                format_penalty: float = 0.0) -> list[dict[str, Any]]:
        """The dialogue's training samples: one row (nothink) or one per turn (think)."""
        final = self.current_emotion
        base = {
            "iteration": iteration,
            "shard": shard,
            "dialogue": self.dialogue,
            "sample": 0,
            "persona_id": self.persona.persona_id,
            "group_id": self.group_id,
            "seed": self.seed,
            "messages": [{"role": m.role, "content": m.content} for m in self.messages],
            "emotion_start": self.emotion_start,
            "emotion": self.emotion,
            "delta": self.delta,
            "reason": self.reason,
            "parse_error": self.parse_error,
            "truncated": [t.sampled.cut for t in self.turns],
            "num_turns": len(self.emotion),
            "outcome": self.outcome or "error",
            "final_emotion": final,
            "reward": reward(final),
            "seconds": self.seconds,
        }
        if not self.think:
            ids, mask, logprobs = self.sequence()
            return [base | {"input_ids": ids, "loss_mask": mask, "logprobs": logprobs}]
        rows = []
        for k, t in enumerate(self.turns):
            n, m = len(t.prompt), len(t.sampled.token_ids)
            rows.append(base | {
                "sample": k,
                "input_ids": t.prompt + list(t.sampled.token_ids),
                "loss_mask": [0] * n + [1] * m,
                "logprobs": [0.0] * n + list(t.sampled.logprobs),
                "reward": base["reward"] if t.well_formed else format_penalty,
                "seconds": self.seconds / len(self.turns),
            })
        return rows


@dataclass(frozen=True)
class DialogueSpec:
    """What to run: a persona, its group, the dialogue's index and seed."""

    persona: Persona
    dialogue: int
    group_id: str
    seed: int
    greedy: bool = False


@dataclass(frozen=True)
class Reaction:
    """The simulator's answer to one reply: step one, the protocol's verdict, step two."""

    feeling: Feeling
    step: Step
    utterance: Utterance


def react(simulator: Simulator, protocol: ProtocolSettings,
          requests: Sequence[SimRequest]) -> list[Reaction]:
    """Feel, apply the protocol, speak: one batched call per step for all `requests`."""
    feelings = simulator.feel(requests)
    steps = [step(protocol, r.emotion, f.delta, r.turn, farewell=False)
             for r, f in zip(requests, feelings, strict=True)]
    utterances = simulator.speak(requests, [s.emotion for s in steps],
                                 [s.outcome for s in steps])
    return [Reaction(f, s, u) for f, s, u in zip(feelings, steps, utterances, strict=True)]


class SimulatorPool:
    """Simulator turns for dialogues that get there at different times.

    A request starts at once on an idle simulator instance (in a worker thread, so the
    event loop keeps feeding the engine); requests arriving while all instances are busy
    wait and go together as one batch to the next instance that frees up (backends batch
    or send a batch's calls concurrently). Each instance serves one batch at a time, so a
    backend needs no thread safety; several instances of an HTTP backend let batches
    overlap.
    """

    def __init__(self, simulators: Sequence[Simulator], protocol: ProtocolSettings,
                 window_s: float = 0.002) -> None:
        self.protocol = protocol
        self.window_s = window_s
        self._idle = list(simulators)
        self._pending: list[tuple[SimRequest, asyncio.Future[Reaction]]] = []
        self._scheduled = False
        self._serving: set[asyncio.Task[None]] = set()  # the loop keeps weak refs only
        self._executor = ThreadPoolExecutor(max_workers=len(self._idle),
                                            thread_name_prefix="simulator")

    async def react(self, request: SimRequest) -> Reaction:
        future: asyncio.Future[Reaction] = asyncio.get_running_loop().create_future()
        self._pending.append((request, future))
        self._schedule()
        return await future

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def _schedule(self) -> None:
        # A short window lets requests that arrive together (one batch of replies) leave
        # in one batch.
        if not self._scheduled and self._pending and self._idle:
            self._scheduled = True
            asyncio.get_running_loop().call_later(self.window_s, self._dispatch)

    def _dispatch(self) -> None:
        self._scheduled = False
        while self._pending and self._idle:
            share = -(-len(self._pending) // len(self._idle))  # spread over idle instances
            batch, self._pending = self._pending[:share], self._pending[share:]
            task = asyncio.ensure_future(self._serve(self._idle.pop(), batch))
            self._serving.add(task)
            task.add_done_callback(self._serving.discard)

    async def _serve(self, sim: Simulator,
                     batch: list[tuple[SimRequest, asyncio.Future[Reaction]]]) -> None:
        loop = asyncio.get_running_loop()
        try:
            reactions = await loop.run_in_executor(
                self._executor, react, sim, self.protocol, [r for r, _ in batch])
            for (_, future), reaction in zip(batch, reactions, strict=True):
                future.set_result(reaction)
        except Exception as exc:  # a backend that raises fails its dialogues (and the run)
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        finally:
            self._idle.append(sim)
            self._schedule()


def user_message(chat: ChatTokens, text: str, max_tokens: Optional[int], where: str) -> str:
    """A message of the simulated user as the policy gets it: cut to its first
    `max_tokens` tokens when longer (`simulator.max_user_tokens`, which the context
    check counts on; rlver/context.py), with a line on stderr."""
    if max_tokens is None:
        return text
    ids = chat.encode(text)
    if len(ids) <= max_tokens:
        return text
    print(f"{where}: a simulated user's message of {len(ids)} tokens cut to "
          f"simulator.max_user_tokens={max_tokens}", file=sys.stderr, flush=True)
    return str(chat.tokenizer.decode(ids[:max_tokens], skip_special_tokens=True))


class Turns:
    """The per-turn bookkeeping shared by every schedule (and the benchmark's re-creation
    of the original loop): what the policy sampled in, what the simulator said out.
    `max_user_tokens`: the longest simulator message the policy gets (`user_message`)."""

    def __init__(self, dialogues: list[Dialogue], engine: Engine, chat: ChatTokens,
                 sampling: SamplingSettings, label: str,
                 iteration: Optional[int] = None,
                 max_user_tokens: Optional[int] = None) -> None:
        self.dialogues = dialogues
        self.engine = engine
        self.chat = chat
        self.sampling = sampling
        self.label = label  # starts with the stage's name: "rollout iter 3 shard 1"
        self.iteration = iteration
        self.max_user_tokens = max_user_tokens
        self.finished = 0

    def sampling_for(self, d: Dialogue) -> SamplingSettings:
        return replace(self.sampling, greedy=True) if d.greedy else self.sampling

    def fits(self, d: Dialogue) -> bool:
        """False (and the dialogue ends with outcome error) if its context is full."""
        try:
            self.engine.check_fits(d.context, self.sampling)
            return True
        except ContextFull as exc:
            self.end(d, "error", f"context full ({exc})")
            return False

    def take_reply(self, d: Dialogue, s: Sampled, turn: int) -> SimRequest:
        """Record the sample; the simulator sees the visible reply only."""
        text_ids = s.token_ids[:-1] if s.finished else s.token_ids
        text = self.engine.tokenizer.decode(text_ids, skip_special_tokens=True)
        visible, ok = split_think(text) if d.think else (text.strip(), True)
        d.turns.append(TurnSample(list(d.context), s, ok))
        d.messages.append(Message("assistant", visible))
        return SimRequest(d.persona, tuple(d.messages), d.current_emotion, turn,
                          derive_seed(d.seed, "simulator", turn))

    def apply(self, d: Dialogue, r: Reaction) -> None:
        """The protocol's verdict; if the dialogue goes on, the next context."""
        f, st, u = r.feeling, r.step, r.utterance
        d.emotion.append(st.emotion)
        d.delta.append(st.delta)
        d.reason.append(f.reason)
        d.parse_error.append(f.parse_error)
        # The persona's farewell comes from step two, after the protocol's verdict; a
        # verdict of its own (success, failure, turn limit) takes precedence.
        outcome = st.outcome or ("goodbye" if u.farewell else None)
        if f.fatal:
            outcome = "error"
        text = user_message(self.chat, u.text, self.max_user_tokens,
                            f"{self.label}: dialogue {d.dialogue}")
        d.messages.append(Message("user", text))
        if outcome is not None:
            self.end(d, outcome)
            return
        history = [{"role": m.role, "content": m.content} for m in d.messages[:-1]]
        last = d.turns[-1]
        if d.think:  # the thinking leaves the context: only the visible reply stays
            d.context = last.prompt + self.chat.after_reply(history, text)
        else:  # the sampled ids stay exactly as sampled
            s = last.sampled
            tail = self.engine.tokenizer.decode(s.token_ids[-1:]) if s.finished else ""
            d.context = (last.prompt + list(s.token_ids)
                         + self.chat.continuation(history, text, tail))

    def end(self, d: Dialogue, outcome: str, why: str = "") -> None:
        d.outcome = outcome
        self.finished += 1
        faults.point(f"{self.label.split()[0]}.dialogue_end", self.iteration)
        if why:
            print(f"{self.label}: dialogue {d.dialogue} ends with {outcome}: {why}",
                  file=sys.stderr, flush=True)


def start_dialogues(specs: list[DialogueSpec], chat: ChatTokens, protocol: ProtocolSettings,
                    think: bool = False, max_user_tokens: Optional[int] = None,
                    label: str = "rollout") -> list[Dialogue]:
    """Each dialogue opened by its persona's first line (cut as `user_message` cuts),
    waiting for the first reply."""
    out = []
    for s in specs:
        opening = user_message(chat, s.persona.opening_line, max_user_tokens,
                               f"{label}: dialogue {s.dialogue}")
        out.append(Dialogue(
            persona=s.persona,
            dialogue=s.dialogue,
            group_id=s.group_id,
            seed=s.seed,
            emotion_start=protocol.initial_emotion,
            messages=[Message("user", opening)],
            context=chat.start(opening),
            think=think,
            greedy=s.greedy,
        ))
    return out


def run_dialogues(
    specs: list[DialogueSpec],
    engine: Engine,
    simulator: Simulator | Sequence[Simulator],
    protocol: ProtocolSettings,
    sampling: SamplingSettings,
    system_prompt: str,
    batch_size: int,
    label: str = "rollout",
    *,
    iteration: Optional[int] = None,
    think: bool = False,
    schedule: str = "batched",
    sessions: bool = True,
    max_user_tokens: Optional[int] = None,
) -> list[Dialogue]:
    """Run every dialogue to its end; returns them in the order of `specs`.

    `simulator`: one backend, or several instances of one (each serves one batch at a
    time; more instances, more simulator batches in flight). `schedule`: see the module
    docstring; `async` needs an engine that serves concurrent requests. `sessions`
    (async, nothink): each dialogue's turns share an engine session. `iteration`: the
    run's iteration, for the stage's kill points (rlver/faults.py). `max_user_tokens`:
    the simulated user's messages are cut to this many of the policy's tokens
    (`simulator.max_user_tokens`; None: never cut).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule == "async" and not engine.concurrent:
        raise ValueError(f"schedule async needs a concurrent engine; "
                         f"{type(engine).__name__} is not (use schedule batched)")
    chat = ChatTokens(engine.tokenizer, system_prompt)
    dialogues = start_dialogues(specs, chat, protocol, think, max_user_tokens, label)
    sims = [simulator] if isinstance(simulator, Simulator) else list(simulator)
    run = Turns(dialogues, engine, chat, sampling, label, iteration, max_user_tokens)
    if schedule == "async":
        asyncio.run(_run_async(run, sims, protocol, batch_size, sessions and not think))
    else:
        asyncio.run(_run_batched(run, sims, protocol, batch_size))
    return dialogues


async def _run_async(run: Turns, sims: list[Simulator], protocol: ProtocolSettings,
                     batch_size: int, sessions: bool = False) -> None:
    """Every dialogue its own task: generate -> simulator -> next turn, at its own pace.

    At most `batch_size` dialogues generate at once; the others wait for a slot (first
    come, first served). With more dialogues than that, the engine keeps working on some
    while the others wait on their simulator, instead of all of them generating, then all
    of them waiting (dialogues that start together stay in step otherwise).
    """
    pool = SimulatorPool(sims, protocol)
    slots = asyncio.Semaphore(batch_size)
    n = len(run.dialogues)

    async def live(d: Dialogue) -> None:
        t0 = time.perf_counter()
        turn = 0
        key = object() if sessions else None  # this dialogue's engine session
        try:
            while d.outcome is None and run.fits(d):
                turn += 1
                async with slots:
                    s = await run.engine.agenerate(d.context, run.sampling_for(d),
                                                   derive_seed(d.seed, "generate", turn),
                                                   session=key)
                run.apply(d, await pool.react(run.take_reply(d, s, turn)))
        finally:
            if key is not None:
                run.engine.end_session(key)
        d.seconds = time.perf_counter() - t0
        print(f"{run.label}: turn {turn}: {run.finished}/{n} dialogues finished",
              file=sys.stderr, flush=True)

    try:
        await asyncio.gather(*(live(d) for d in run.dialogues))
    finally:
        pool.close()


async def _run_batched(run: Turns, sims: list[Simulator], protocol: ProtocolSettings,
                       batch_size: int) -> None:
    """Fixed batches in a fixed order: the engine generates batch b+1 (in a thread) while
    the simulator answers batch b; a batch goes again once its own answers are in."""
    pool = SimulatorPool(sims, protocol)
    batches = [run.dialogues[i : i + batch_size]
               for i in range(0, len(run.dialogues), batch_size)]
    waiting: dict[int, asyncio.Future[Any]] = {}
    n = len(run.dialogues)

    async def simulate(batch: list[Dialogue], requests: list[SimRequest], turn: int,
                       t0: float) -> None:
        reactions = await asyncio.gather(*(pool.react(r) for r in requests))
        seconds = (time.perf_counter() - t0) / len(batch)
        for d, r in zip(batch, reactions, strict=True):
            d.seconds += seconds
            run.apply(d, r)
        print(f"{run.label}: turn {turn}: {run.finished}/{n} dialogues finished",
              file=sys.stderr, flush=True)

    try:
        turn = 0
        while any(d.outcome is None for d in run.dialogues):
            turn += 1
            for b, batch in enumerate(batches):
                if b in waiting:
                    await waiting.pop(b)
                live = [d for d in batch if d.outcome is None and run.fits(d)]
                if not live:
                    continue
                t0 = time.perf_counter()
                # Greedy members (rollout.greedy_per_group) go in a call of their own.
                greedy = [d for d in live if d.greedy]
                sampled = [d for d in live if not d.greedy]
                live = greedy + sampled
                samples = []
                for part in (greedy, sampled):
                    if part:
                        samples += await asyncio.to_thread(
                            run.engine.generate, [d.context for d in part],
                            run.sampling_for(part[0]),
                            [derive_seed(d.seed, "generate", turn) for d in part])
                requests = [run.take_reply(d, s, turn)
                            for d, s in zip(live, samples, strict=True)]
                waiting[b] = asyncio.ensure_future(simulate(live, requests, turn, t0))
        await asyncio.gather(*waiting.values())
    finally:
        for task in waiting.values():
            task.cancel()
        pool.close()


def simulator_instances(sim_cfg: Any, dialogues: int, run: Any = None) -> list[Simulator]:
    """The simulator backend for one stage (of `run`, a rlver.layout.Run). An HTTP backend
    gets several instances, so simulator calls of dialogues that arrive at different times
    overlap; in-process backends get one (they batch)."""
    from rlver.simulator import make_simulator

    count = 1
    if sim_cfg.backend in ("llm_http", "served"):
        count = max(1, min(dialogues, int(sim_cfg.max_concurrency)))
    return [make_simulator(sim_cfg, run) for _ in range(count)]


def close_all(objects: Sequence[Any]) -> None:
    for obj in objects:
        close: Optional[Callable[[], None]] = getattr(obj, "close", None)
        if close is not None:
            close()
