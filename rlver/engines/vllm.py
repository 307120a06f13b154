"""vLLM's AsyncLLM in-process as an engine: continuous batching, per-request seeds and
one streaming-input session per dialogue."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Coroutine, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, TypeVar

from rlver import lora
from rlver.engines import vllm_cpu, vllm_worker
from rlver.engines.base import (
    DEFAULT_MAX_MODEL_LEN,
    Engine,
    Sampled,
    SamplingSettings,
    checked_weights,
    stop_tokens,
)

T = TypeVar("T")


class VLLMEngine(Engine):
    """vLLM's AsyncLLM, run on an event loop of its own in a background thread.

    Its own loop lets any caller use it: the rollout's asyncio loop (`agenerate`, many
    requests in flight), plain synchronous code (`generate`), or several `asyncio.run`
    calls one after another (AsyncLLM binds its output handler to the first loop it sees).
    Needs an `if __name__ == "__main__":` guard in the script that builds it: vLLM starts
    worker processes.

    Sessions (`agenerate(..., session=key)`): the first turn of a dialogue opens one vLLM
    streaming-input request; each later turn whose prompt extends the last one (the
    previous prompt + the ids sampled, then the new user part) goes into that request as
    a new input chunk, so vLLM keeps the dialogue's KV cache between turns and computes
    only the new tokens (a new request recomputes its prompt past the last full cached
    block and pays a request's set-up over the whole prefix). What that costs:

    - a session holds its KV cache while its simulator answers. The open sessions are
      budgeted (`session_budget_blocks`: the KV cache less one longest request); a turn
      that would not fit closes the least recently used idle sessions, and if that is not
      enough it runs as a plain request (a line on stderr says so);
    - vLLM seeds a session once: a dialogue's samples follow the seed of its first turn
      (and then of the turn after any fall-back), not one seed per turn as plain requests
      do. Reruns give the same samples as long as no session had to be closed for room;
    - a prompt that does not extend the session (think-then-say drops the thinking)
      closes it and opens a new one, which is a plain request's cost again.
    """

    concurrent = True

    def __init__(self, policy_dir: str, dtype: str, engine_args: Optional[dict] = None,
                 stat_loggers: Sequence[Any] = (),
                 max_model_len: int = DEFAULT_MAX_MODEL_LEN, lora_rank: int = 0) -> None:
        """`max_model_len`: the context (rollout.max_model_len). `stat_loggers`: vLLM
        stat-logger factories (subclasses of vLLM's `StatLoggerBase`), called once per
        engine step; with any, vLLM collects its per-step statistics (off otherwise: they
        cost the front end time). `lora_rank`: serve LoRA adapters of up to this rank
        (`load_adapter`); a LoRA adapter folder as `policy_dir` runs on its base with LoRA
        enabled for its rank."""
        from transformers import AutoTokenizer, GenerationConfig
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        adapter = policy_dir if lora.is_adapter(policy_dir) else None
        if adapter is not None:
            policy_dir = str(lora.base_of(adapter))
            lora_rank = lora_rank or lora.adapter_rank(adapter)
        self.tokenizer = AutoTokenizer.from_pretrained(policy_dir)
        try:
            generation_config: Any = GenerationConfig.from_pretrained(policy_dir)
        except OSError:
            generation_config = None
        self.stop_token_ids = stop_tokens(self.tokenizer, generation_config)
        args: dict[str, Any] = {
            "model": str(policy_dir),
            "dtype": dtype,
            "max_model_len": max_model_len,
            "seed": 0,
            # Log-probs after temperature: what the trainer recomputes.
            "logprobs_mode": "processed_logprobs",
            "enable_prefix_caching": True,  # turn t+1's prompt extends turn t's
            "generation_config": "vllm",  # sampling comes from our settings only
            "disable_log_stats": not stat_loggers,
            "worker_extension_cls": vllm_worker.QUALNAME,  # load_weights
        }
        if lora_rank:
            # One adapter at a time: each policy's, under a new request id (load_adapter).
            args |= {"enable_lora": True, "max_lora_rank": lora.vllm_max_rank(lora_rank),
                     "max_loras": 1}
        if current_platform.is_cpu():
            args |= vllm_cpu.POLICY_DEFAULTS
            vllm_cpu.unbound_threads()
        args |= dict(engine_args or {})
        if not args.get("enforce_eager") and "compilation_config" not in args:
            args["compilation_config"] = {"cache_dir": compile_cache_dir(policy_dir, args)}
        args = vllm_cpu.whole_prompts(args)
        self.max_context = int(args["max_model_len"])
        self._ids = itertools.count()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-engine",
                                        daemon=True)
        self._thread.start()

        async def start() -> Any:
            return AsyncLLM.from_engine_args(AsyncEngineArgs(**args),
                                             stat_loggers=list(stat_loggers) or None)

        self.llm = self._run(start())
        self._policy_dir = Path(policy_dir)
        #: Seconds the last `load_weights` took: {"write": into /dev/shm, "load": the
        #: worker's reload and the cache reset}.
        self.last_load_s: dict[str, float] = {}
        cache = self.llm.vllm_config.cache_config
        self.block_size = int(cache.block_size)
        #: KV blocks the open sessions may hold: all but one longest request's worth, so
        #: a request can always run to its end.
        self.session_budget_blocks = (int(cache.num_gpu_blocks or 0)
                                      - self._blocks(self.max_context))
        # A paused session keeps a request slot in vLLM's scheduler: half of them at most.
        self.max_sessions = max(1, int(self.llm.vllm_config.scheduler_config.max_num_seqs) // 2)
        self._sessions: dict[Hashable, _Session] = {}
        self._closing: set[asyncio.Future[None]] = set()  # sessions vLLM has not ended yet
        self._session_uses = itertools.count()
        #: The LoRA request of the policy's adapter (None: the base), and the next id.
        self._lora: Any = None
        self._lora_ids = itertools.count(1)
        if adapter is not None:
            self.load_adapter(adapter)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _params(self, settings: SamplingSettings, seed: int, ignore_eos: bool = False) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        if settings.max_sentences is not None:  # config time refuses it first
            raise ValueError("max_sentences needs the hf engine: vLLM stops at single "
                             "token ids, not at the n-th sentence end")

        return SamplingParams(
            max_tokens=settings.max_new_tokens,
            min_tokens=settings.max_new_tokens if ignore_eos else 0,
            ignore_eos=ignore_eos,
            temperature=0.0 if settings.greedy else settings.temperature,
            top_p=1.0 if settings.greedy else settings.top_p,
            top_k=0,
            seed=seed & 0x7FFF_FFFF_FFFF_FFFF,
            stop_token_ids=self.stop_token_ids,
            logprobs=0,  # the sampled token's log-prob only
            detokenize=False,
            skip_special_tokens=False,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )

    def _sampled(self, request_output: Any) -> Sampled:
        self.prompt_tokens += len(request_output.prompt_token_ids)
        self.cached_prompt_tokens += request_output.num_cached_tokens or 0
        output = request_output.outputs[0]
        ids = tuple(output.token_ids)
        return Sampled(ids, tuple(_logprobs(ids, output.logprobs)),
                       finished=self._finished(ids, output.finish_reason))

    def _finished(self, ids: Sequence[int], finish_reason: Optional[str]) -> bool:
        """The reply ended with the end-of-turn token (not cut at max_new_tokens)."""
        return bool(ids) and ids[-1] in self.stop_token_ids and finish_reason == "stop"

    async def _one(self, prompt: list[int], settings: SamplingSettings, seed: int,
                   ignore_eos: bool = False) -> Sampled:
        from vllm.inputs import TokensPrompt

        final = None
        async for out in self.llm.generate(TokensPrompt(prompt_token_ids=list(prompt)),
                                           self._params(settings, seed, ignore_eos),
                                           f"rlver-{next(self._ids)}",
                                           lora_request=self._lora):
            final = out
        assert final is not None
        return self._sampled(final)

    async def agenerate(self, prompt: list[int], settings: SamplingSettings, seed: int,
                        ignore_eos: bool = False, *,
                        session: Optional[Hashable] = None) -> Sampled:
        """`ignore_eos`: generate exactly max_new_tokens (for throughput measurements).
        `session`: see the class docstring."""
        self.check_fits(prompt, settings)
        work = (self._one(prompt, settings, seed, ignore_eos) if session is None
                else self._in_session(session, prompt, settings, seed, ignore_eos))
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, self._loop))

    def end_session(self, session: Hashable) -> None:
        """Close the dialogue's session: its KV cache goes back to vLLM (its full blocks
        stay in the prefix cache). Safe from any thread, and for unknown keys."""
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._close_session, session)

    @property
    def open_sessions(self) -> int:
        """Sessions open now (after any `end_session` calls already made)."""

        async def count() -> int:
            return len(self._sessions)

        return self._run(count())

    def _blocks(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def _close_session(self, key: Hashable) -> None:
        s = self._sessions.pop(key, None)
        if s is not None:
            s.inputs.put_nowait(None)  # vLLM finishes the request after its current chunk
            if not s.task.done():
                self._closing.add(s.task)
                s.task.add_done_callback(self._closing.discard)

    def _make_room(self, key: Hashable, blocks: int) -> bool:
        """Close idle sessions, least recently used first, until the open sessions and
        this turn's `blocks` fit the budget and a session slot is free."""
        def fits() -> bool:
            held = sum(s.blocks for k, s in self._sessions.items() if k != key)
            slots = len(self._sessions) - (key in self._sessions)
            return held + blocks <= self.session_budget_blocks and slots < self.max_sessions

        idle = sorted((s.last_use, k) for k, s in self._sessions.items()
                      if k != key and not s.busy)
        for _, k in idle:
            if fits():
                break
            self._close_session(k)
            print(f"vllm engine: closed an idle dialogue session for room (KV budget of "
                  f"{self.session_budget_blocks} blocks, {self.max_sessions} sessions); "
                  f"that dialogue's next turn opens a new one", file=sys.stderr, flush=True)
        return fits()

    async def _in_session(self, key: Hashable, prompt: list[int], settings: SamplingSettings,
                          seed: int, ignore_eos: bool) -> Sampled:
        from vllm.engine.protocol import StreamingInput
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        s = self._sessions.get(key)
        if s is not None and s.busy:
            raise RuntimeError("one turn at a time in a session: the previous one is running")
        extends = (s is not None and not s.task.done() and len(prompt) >= len(s.tokens)
                   and prompt[: len(s.tokens)] == s.tokens)
        if s is not None and not extends:
            self._close_session(key)
            s = None
        blocks = self._blocks(len(prompt) + settings.max_new_tokens)
        if not self._make_room(key, blocks):
            self._close_session(key)
            print(f"vllm engine: no room for a dialogue session ({blocks} blocks); this "
                  f"turn runs as a plain request", file=sys.stderr, flush=True)
            return await self._one(prompt, settings, seed, ignore_eos)
        params = self._params(settings, seed, ignore_eos)
        # vLLM refuses FINAL_ONLY for streaming input: deltas, gathered here; one at the
        # end of each chunk (and one for the session's first token), as FINAL_ONLY would.
        params.output_kind = RequestOutputKind.DELTA
        params.stream_interval = settings.max_new_tokens + 1
        if s is None:
            s = _Session(f"rlver-session-{next(self._ids)}")
            self._sessions[key] = s
            new = list(prompt)
            s.task = asyncio.ensure_future(self._pump(s, params))
        else:
            # The session keeps every token it computed; the last sampled one never was,
            # so it goes again, followed by the prompt's new part.
            new = prompt[len(s.tokens) - 1 :]
        s.busy, s.blocks, s.last_use = True, blocks, next(self._session_uses)
        s.inputs.put_nowait(StreamingInput(prompt=TokensPrompt(prompt_token_ids=new),
                                           sampling_params=params))
        try:
            result = await s.results.get()
        except BaseException:  # cancelled: the chunk runs on, and nobody will read it
            self._close_session(key)
            raise
        finally:
            s.busy = False
        if isinstance(result, BaseException):
            self._close_session(key)
            raise result
        ids, logprobs, finish_reason = result
        s.tokens = [*prompt, *ids]
        self.prompt_tokens += len(prompt)
        self.cached_prompt_tokens += len(prompt) - len(new) + s.cached
        s.cached = 0
        return Sampled(tuple(ids), tuple(logprobs), finished=self._finished(ids, finish_reason))

    async def _pump(self, s: _Session, params: Any) -> None:
        """The session's one vLLM request: feeds it the queued chunks, and hands each
        chunk's ids and log-probs back when the chunk ends (finish_reason set)."""

        async def chunks() -> Any:
            while (chunk := await s.inputs.get()) is not None:
                yield chunk

        ids: list[int] = []
        logprobs: list[float] = []
        first = True
        try:
            async for out in self.llm.generate(chunks(), params, s.request_id,
                                               lora_request=self._lora):
                if first:  # a new session's prompt may start from the prefix cache
                    s.cached, first = out.num_cached_tokens or 0, False
                o = out.outputs[0]
                ids += o.token_ids
                logprobs += _logprobs(o.token_ids, o.logprobs or [])
                if o.finish_reason is not None:
                    if s.busy:
                        s.results.put_nowait((ids, logprobs, o.finish_reason))
                    ids, logprobs = [], []
        except Exception as exc:  # noqa: BLE001 - handed to the turn waiting for it
            s.results.put_nowait(exc)

    def generate(
        self, prompts: list[list[int]], settings: SamplingSettings, seeds: Sequence[int],
        ignore_eos: bool = False,
    ) -> list[Sampled]:
        """All prompts enter the scheduler in the same step (the engine is paused while they
        are added), so a batch runs the same way every time: byte-identical reruns.
        `ignore_eos`: generate exactly max_new_tokens (for throughput measurements)."""
        for p in prompts:
            self.check_fits(p, settings)
        return self._run(self._batch(prompts, settings, list(seeds), ignore_eos))

    async def _batch(self, prompts: list[list[int]], settings: SamplingSettings,
                     seeds: list[int], ignore_eos: bool) -> list[Sampled]:
        from vllm.inputs import TokensPrompt

        queues = []
        await self.llm.pause_generation(mode="keep", clear_cache=False)
        try:
            for p, s in zip(prompts, seeds, strict=True):
                queues.append(await self.llm.add_request(
                    f"rlver-{next(self._ids)}", TokensPrompt(prompt_token_ids=list(p)),
                    self._params(settings, s, ignore_eos), lora_request=self._lora))
        finally:
            await self.llm.resume_generation()
        results = []
        for q in queues:
            out = await q.get()
            while not out.finished:
                out = await q.get()
            results.append(self._sampled(out))
        return results

    def reset_prefix_cache(self) -> None:
        """Forget cached prompt prefixes (benchmarks: every run starts cold; a resident
        block: each shard and evaluation starts as a fresh engine would), once the sessions
        already ended have let go of their KV cache. RuntimeError if vLLM cannot (a
        request still holds cached blocks)."""

        async def reset() -> None:
            await asyncio.gather(*self._closing, return_exceptions=True)
            await self._reset_cache()

        self._run(reset())

    async def _reset_cache(self) -> None:
        if not await self.llm.reset_prefix_cache():
            raise RuntimeError("vllm engine: the prefix cache was not reset (requests in "
                               "flight hold cached blocks)")

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> None:
        """Load `weights` into the running engine's model: vLLM's in-place reload in its
        worker process (`vllm_worker.PolicyWeights`), then an empty prefix cache, whose
        KV was computed by the old policy.

        The tensors cross to the worker process as one safetensors file in /dev/shm
        (memory, not disk; deleted after), which the worker maps and reads tensor by
        tensor: vLLM's RPC carries no tensors to it on CPU, and its RL weight-transfer
        backends (NCCL, CUDA IPC) need a GPU. A tied alias (SmolLM2's lm_head) is loaded
        too, from the tensor it shares. Time: `last_load_s`.

        Open dialogue sessions hold KV cache of the old policy: idle ones are closed
        (their next turn opens a new session under the new policy); a turn in flight
        makes this refuse (RuntimeError). Plain requests in flight finish first (vLLM's
        pause for weight updates waits for them). Meant for the time between iterations,
        when no dialogue runs."""
        expected, aliases = self._weight_names()
        new = checked_weights(weights, expected, aliases, type(self).__name__)
        self.last_load_s = self._run(self._load(
            {n: t for n, t in new.items() if n not in aliases}, aliases))

    async def _load(self, weights: dict[str, Any], aliases: dict[str, str]
                    ) -> dict[str, float]:
        from safetensors.torch import save_file

        await self._end_sessions("load_weights")
        start = time.perf_counter()
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        with tempfile.NamedTemporaryFile(prefix="rlver-policy-", suffix=".safetensors",
                                         dir=shm) as f:
            await asyncio.to_thread(save_file, {n: t.detach().to("cpu").contiguous()
                                                for n, t in weights.items()}, f.name)
            written = time.perf_counter()
            await self._paused(self.llm.collective_rpc("load_policy_weights",
                                                       args=(f.name, aliases)))
        return {"write": written - start, "load": time.perf_counter() - written}

    async def _end_sessions(self, what: str) -> None:
        """Before a new policy: refuse while a dialogue turn runs, close idle sessions and
        wait until vLLM has ended them (their KV cache is the old policy's)."""
        if any(s.busy for s in self._sessions.values()):
            raise RuntimeError(f"{what} during a dialogue turn: the turn's KV cache "
                               "is the old policy's; load between turns")
        for key in list(self._sessions):
            self._close_session(key)
        await asyncio.gather(*self._closing, return_exceptions=True)

    async def _paused(self, change: Coroutine[Any, Any, Any]) -> None:
        """Run `change` (a new policy) with generation paused once the requests in flight
        have finished, then empty the prefix cache, whose KV the old policy computed."""
        await self.llm.pause_generation(mode="wait", clear_cache=False)
        try:
            await change
            await self._reset_cache()
        finally:
            await self.llm.resume_generation()

    def load_adapter(self, adapter_dir: str) -> None:
        """Make the LoRA adapter at `adapter_dir` the policy: vLLM loads it into its worker
        at once under a new request id (`add_lora`; the folder is read then and may be
        deleted afterwards), the previous adapter is removed, and the prefix cache is
        emptied (its KV was computed under the old one; vLLM's cache keys hold the
        adapter too). Sessions and requests in flight as in `load_weights`. Needs an
        engine started with `lora_rank`. Time: `last_load_s`."""
        from vllm.lora.request import LoRARequest

        if not self.llm.vllm_config.lora_config:
            raise RuntimeError("load_adapter: the engine was started without LoRA "
                               "(make_engine(..., lora=model.lora))")
        n = next(self._lora_ids)
        request = LoRARequest(f"rlver-policy-{n}", n, str(Path(adapter_dir).resolve()))
        self.last_load_s = self._run(self._swap_adapter(request))

    async def _swap_adapter(self, request: Any) -> dict[str, float]:
        await self._end_sessions("load_adapter")
        start = time.perf_counter()

        async def swap() -> None:
            if not await self.llm.add_lora(request):
                raise RuntimeError(f"vllm engine: adapter {request.lora_path} not loaded")
            if self._lora is not None:
                await self.llm.remove_lora(self._lora.lora_int_id)
            self._lora = request

        await self._paused(swap())
        return {"load": time.perf_counter() - start}

    def _weight_names(self) -> tuple[set[str], dict[str, str]]:
        """(the parameters `load_weights` needs, {tied alias: the parameter it shares}),
        from the checkpoint the engine started with."""
        from safetensors import safe_open

        names: set[str] = set()
        for file in self._policy_dir.glob("*.safetensors"):
            with safe_open(str(file), framework="pt") as f:
                names.update(f.keys())
        config = json.loads((self._policy_dir / "config.json").read_text())
        aliases = ({"lm_head.weight": "model.embed_tokens.weight"}
                   if config.get("tie_word_embeddings") else {})
        return names - set(aliases), aliases

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(_cancel_pending())
        self.llm.shutdown()
        # Dropped now, while the interpreter is whole: AsyncLLM.__del__ shuts down again
        # and fails if it first runs at interpreter exit.
        self.llm = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()


def compile_cache_dir(policy_dir: str, engine_args: dict[str, Any]) -> str:
    """vLLM's torch.compile cache for this architecture and these engine arguments, shared
    by every iteration's policy. vLLM keys its own cache by the model's path too, and each
    iteration's policy is a new directory, so every rollout job would compile the model
    again (docs/scale.md). The compiled graphs hold no weights (RL trainers load new
    weights into a compiled vLLM in place), so the policies of one architecture share them."""
    import vllm
    from vllm import envs

    config = json.loads((Path(policy_dir) / "config.json").read_text())
    for volatile in ("_name_or_path", "transformers_version"):
        config.pop(volatile, None)
    key = json.dumps({"config": config, "vllm": vllm.__version__, "env": envs.compile_factors(),
                      "args": {k: v for k, v in engine_args.items() if k != "model"}},
                     sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return os.path.join(envs.VLLM_CACHE_ROOT, "torch_compile_cache", f"rlver-{digest}")


def _logprobs(ids: Sequence[int], logprobs: Sequence[Any]) -> list[float]:
    """The sampled ids' log-probs out of vLLM's per-position {id: Logprob} maps."""
    return [float(lp[t].logprob) for t, lp in zip(ids, logprobs, strict=True)]


def step_recorder(steps: list[tuple[float, int, int]]) -> type:
    """A vLLM stat-logger factory for `VLLMEngine(stat_loggers=...)` that appends each
    engine step to `steps` as (time, sequences running, tokens generated): what
    bench/rollout_speed.py --steps times."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class StepRecorder(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            pass

        def record(self, scheduler_stats: Any, iteration_stats: Any,
                   mm_cache_stats: Any = None, engine_idx: int = 0) -> None:
            if iteration_stats is not None:
                steps.append((iteration_stats.iteration_timestamp,
                              scheduler_stats.num_running_reqs if scheduler_stats else 0,
                              iteration_stats.num_generation_tokens))

        def log_engine_initialized(self) -> None:
            pass

    return StepRecorder


@dataclass
class _Session:
    """One dialogue's streaming-input request in `VLLMEngine` (its event loop only)."""

    request_id: str
    #: Chunks for vLLM; None ends the request.
    inputs: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    #: Per chunk: (ids, log-probs, finish_reason), or the exception that ended it.
    results: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    #: What the session's KV holds after the last chunk: its prompt + the sampled ids.
    tokens: list[int] = field(default_factory=list)
    #: KV blocks counted for it in the budget: its last prompt + that turn's reply budget.
    blocks: int = 0
    busy: bool = False
    last_use: int = 0
    #: Prompt tokens of the first chunk that vLLM took from its prefix cache.
    cached: int = 0
    task: Any = None


async def _cancel_pending() -> None:
    """Cancel the engine loop's own tasks (vLLM's output handler) before the loop stops."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
