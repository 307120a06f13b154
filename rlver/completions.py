"""Chat-completion backends shared by the stages that ask an LLM: the LLM simulated user
(`rlver.simulator.llm`) and LLM-written personas (`rlver.personas.llm`).

Two backends behind one interface (`CompletionBackend`): an OpenAI-compatible HTTP
endpoint, requests in flight together, and an in-process vLLM engine, one batched call.
A backend answers each item with its text or that item's exception, never raises for one
item; with a JSON schema, answers are constrained to it.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from typing import Any, Optional, Protocol

from rlver.engines import vllm_cpu
from rlver.errors import RlverInputError

#: In-process vLLM engine: context (the simulator's: `simulator.max_model_len`) and KV
#: cache sized for CPU and small models.
VLLM_MAX_MODEL_LEN = 4096
VLLM_KV_CACHE_BYTES = 1 << 30

Chat = list[dict[str, str]]


class CompletionError(Exception):
    """One item's call failed. `retryable`: another attempt may succeed (a 400 or 401
    will not)."""

    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class StructuredOutputsRefused(CompletionError):
    """The endpoint refused the JSON-schema request itself (it does not support
    `response_format`): the same request will never succeed, free text might."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class CompletionBackend(Protocol):
    """Chat completions for a batch: text per item, or that item's exception. With a
    `schema`, each answer is constrained to that JSON schema."""

    def complete(
        self,
        batch: list[Chat],
        seeds: Optional[Sequence[int]] = None,
        schema: Optional[dict[str, Any]] = None,
    ) -> list[str | Exception]: ...


class OpenAIHTTPBackend:
    """POST {base_url}/chat/completions, all items of a batch in flight together.

    At most `max_concurrency` requests at a time; each bounded by `timeout_s` in total.
    The API key is `api_key`, or read from the environment variable named by `api_key_env`;
    it is kept only in the request headers, and scrubbed from every text and error this
    backend returns.
    `key` is the config group the settings come from, named in the errors.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "",
        api_key: str = "",
        max_concurrency: int = 32,
        timeout_s: float = 60.0,
        temperature: float = 0.7,
        max_tokens: int = 512,
        key: str = "simulator",
    ) -> None:
        if not base_url:
            raise RlverInputError(f"{key}.base_url is empty. Fix: set it to the endpoint, "
                                  f"e.g. {key}.base_url=http://127.0.0.1:8000/v1.")
        if not model:
            raise RlverInputError(f"{key}.model is empty. Fix: set it to the model name the "
                                  "endpoint serves.")
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.model = model
        self.max_concurrency = max(1, int(max_concurrency))
        self.timeout_s = float(timeout_s)
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self._secret = api_key or _api_key(api_key_env, key)
        self._headers = {"Authorization": f"Bearer {self._secret}"} if self._secret else {}
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._clients: list[Any] = []  # httpx.AsyncClient, one per concurrency slot
        self._ssl: Any = None

    @classmethod
    def from_config(cls, cfg: Any, key: str = "simulator") -> OpenAIHTTPBackend:
        """From a config group with the simulator's backend keys, named `key` in errors."""
        return cls(cfg.base_url, cfg.model, api_key_env=cfg.api_key_env,
                   max_concurrency=cfg.max_concurrency, timeout_s=cfg.timeout_s,
                   temperature=cfg.temperature, max_tokens=cfg.max_tokens, key=key)

    def complete(
        self,
        batch: list[Chat],
        seeds: Optional[Sequence[int]] = None,
        schema: Optional[dict[str, Any]] = None,
    ) -> list[str | Exception]:
        """Synchronous on purpose (rollout code is); runs the requests on this backend's
        own event loop, which keeps its connections open between calls. A `schema` goes
        out as `response_format`; an endpoint that refuses it answers
        StructuredOutputsRefused."""
        if not batch:
            return []
        per_item: list[Optional[int]] = list(seeds) if seeds is not None else [None] * len(batch)
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(self._complete_all(batch, per_item, schema))

    def probe(self, timeout_s: Optional[float] = None) -> str:
        """GET {base_url}/models within `timeout_s` (default: this backend's): "" if the
        endpoint answers, else what went wrong. Any answer but 401, 403 and 5xx counts: a
        server without the listing still serves chat completions."""
        import httpx

        timeout = self.timeout_s if timeout_s is None else timeout_s
        try:
            response = httpx.get(self.base_url + "/models", headers=self._headers,
                                 timeout=httpx.Timeout(timeout))
        except httpx.TimeoutException:
            return f"no answer within {timeout:g} s"
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            return f"not a usable URL ({exc})"
        except httpx.HTTPError as exc:
            return self._scrub(f"connection error: {type(exc).__name__}: {exc}")
        if response.status_code in (401, 403) or response.status_code >= 500:
            return self._scrub(str(_chat_text(response.status_code, response.content)))
        return ""

    def close(self) -> None:
        if self._loop is None or self._loop.is_closed():
            return
        for client in self._clients:
            self._loop.run_until_complete(client.aclose())
        self._clients = []
        self._loop.close()

    async def _complete_all(
        self, batch: list[Chat], seeds: list[Optional[int]], schema: Optional[dict[str, Any]]
    ) -> list[str | Exception]:
        # One client per concurrency slot, each with a single keep-alive connection, handed
        # out through a queue (which is also the concurrency bound). One shared client
        # would do, but httpcore's pool scans all its connections for every request event:
        # at 32 in flight that costs more CPU than the requests themselves.
        free: asyncio.Queue[Any] = asyncio.Queue()
        for client in self._grow_clients(min(self.max_concurrency, len(batch))):
            free.put_nowait(client)
        calls = [self._one(free, chat, seed, schema)
                 for chat, seed in zip(batch, seeds, strict=True)]
        return list(await asyncio.gather(*calls))

    def _grow_clients(self, n: int) -> list[Any]:
        import httpx

        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()  # built once: it loads the CA bundle
        while len(self._clients) < n:
            self._clients.append(httpx.AsyncClient(
                headers=self._headers, verify=self._ssl, timeout=httpx.Timeout(self.timeout_s),
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            ))
        return self._clients[:n]

    async def _one(
        self,
        free: asyncio.Queue[Any],
        chat: Chat,
        seed: Optional[int],
        schema: Optional[dict[str, Any]],
    ) -> str | Exception:
        import httpx

        body: dict[str, Any] = {"model": self.model, "messages": chat,
                                "temperature": self.temperature, "max_tokens": self.max_tokens}
        if seed is not None:
            body["seed"] = seed
        if schema is not None:
            # Not `strict`: OpenAI's strict mode rejects maxLength; vLLM and SGLang enforce
            # the whole schema either way.
            name = schema.get("title", "answer")
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": name, "schema": schema}}
        client = await free.get()
        try:
            # wait_for bounds the whole request: httpx's timeout is per read, and a
            # server trickling bytes would never trip it.
            response = await asyncio.wait_for(client.post(self.url, json=body), self.timeout_s)
        except (asyncio.TimeoutError, httpx.TimeoutException):
            return CompletionError(f"timeout after {self.timeout_s:g} s")
        except httpx.HTTPError as exc:
            return CompletionError(self._scrub(f"connection error: {type(exc).__name__}: {exc}"))
        finally:
            free.put_nowait(client)
        answer = _chat_text(response.status_code, response.content)
        if isinstance(answer, CompletionError):
            if schema is not None and _refuses_response_format(response.status_code,
                                                               response.content):
                return StructuredOutputsRefused(self._scrub(str(answer)))
            return CompletionError(self._scrub(str(answer)), answer.retryable)
        return self._scrub(answer)

    def _scrub(self, text: str) -> str:
        """Remove the API key from anything that leaves this backend (a misbehaving server
        could echo it in an error body)."""
        return text.replace(self._secret, "[redacted]") if self._secret else text


def _api_key(env_name: str, group: str) -> str:
    if not env_name:
        return ""
    key = os.environ.get(env_name, "")
    if not key:
        raise RlverInputError(
            f"{group}.api_key_env names the environment variable {env_name}, which is not "
            f"set. Fix: export {env_name}=<your API key>, or set {group}.api_key_env='' "
            "for an endpoint without a key."
        )
    return key


def _refuses_response_format(status: int, content: bytes) -> bool:
    """A 400 (or a framework's 422) whose body names `response_format`: the endpoint does
    not take JSON-schema requests, as opposed to a bad prompt or an unknown model."""
    return status in (400, 422) and b"response_format" in content.lower()


def _chat_text(status: int, content: bytes) -> str | CompletionError:
    """The first choice's message text, or why there is none. 408, 429 and 5xx may pass;
    other 4xx (bad request, auth, unknown model) will not, so they are not retried."""
    if status != 200:
        snippet = " ".join(content[:200].decode("utf-8", "replace").split())
        retryable = status in (408, 429) or status >= 500
        return CompletionError(f"http {status}: {snippet}", retryable=retryable)
    try:
        text = json.loads(content)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        snippet = " ".join(content[:120].decode("utf-8", "replace").split())
        return CompletionError(f"bad response (not a chat completion): {snippet!r}")
    if not isinstance(text, str):
        return CompletionError(f"bad response: message content is {type(text).__name__}")
    return text


class VLLMEngineBackend:
    """An in-process vLLM engine: the whole batch in one `LLM.chat` call, a seed per item.

    vLLM starts worker processes: build this only under `if __name__ == "__main__":` (or in
    a process started that way, as the workflow's stages are).
    """

    def __init__(
        self,
        model: str,
        *,
        temperature: float = 0.7,
        max_tokens: int = 512,
        max_model_len: int = VLLM_MAX_MODEL_LEN,
        kv_cache_memory_bytes: int = VLLM_KV_CACHE_BYTES,
        key: str = "simulator",
        **engine_kwargs: Any,
    ) -> None:
        if not model:
            raise RlverInputError(f"{key}.model is empty. Fix: set it to a local model "
                                  "directory for the llm_vllm backend.")
        from vllm import LLM, SamplingParams
        from vllm.platforms import current_platform
        from vllm.sampling_params import StructuredOutputsParams

        if current_platform.is_cpu():
            vllm_cpu.simulator_args(engine_kwargs, max_model_len)
            vllm_cpu.unbound_threads()
        self._sampling = SamplingParams
        self._structured = StructuredOutputsParams
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self.llm = LLM(model=model, enforce_eager=True, max_model_len=max_model_len,
                       kv_cache_memory_bytes=kv_cache_memory_bytes, **engine_kwargs)

    @classmethod
    def from_config(cls, cfg: Any, key: str = "simulator") -> VLLMEngineBackend:
        """From the simulator's config group (its context: `max_model_len`), named `key`
        in errors."""
        return cls(cfg.model, temperature=cfg.temperature, max_tokens=cfg.max_tokens,
                   max_model_len=cfg.max_model_len, key=key)

    def complete(
        self,
        batch: list[Chat],
        seeds: Optional[Sequence[int]] = None,
        schema: Optional[dict[str, Any]] = None,
    ) -> list[str | Exception]:
        """One `LLM.chat` call; with a `schema`, decoding is constrained to it."""
        if not batch:
            return []
        per_item: list[Optional[int]] = list(seeds) if seeds is not None else [None] * len(batch)
        params = [self._sampling(temperature=self.temperature, max_tokens=self.max_tokens,
                                 seed=s, structured_outputs=self._constraint(schema))
                  for s in per_item]
        try:
            outputs = self.llm.chat(batch, params, use_tqdm=False)
        except Exception as exc:
            if len(batch) == 1:
                return [CompletionError(f"vllm: {type(exc).__name__}: {exc}")]
            # One bad conversation (e.g. longer than the context) fails the whole call:
            # isolate it so the others still get their answers.
            return [self.complete([c], None if s is None else [s], schema)[0]
                    for c, s in zip(batch, per_item, strict=True)]
        return [o.outputs[0].text if o.outputs else CompletionError("vllm: no output")
                for o in outputs]

    def close(self) -> None:
        """Stop the engine's processes now. Left to interpreter exit, multiprocessing can
        wait on the engine process before vLLM stops it, and the program never ends (seen
        in bench/simulator.py --structured)."""
        self.llm.llm_engine.engine_core.shutdown()

    def _constraint(self, schema: Optional[dict[str, Any]]) -> Any:
        """vLLM's structured-outputs parameters for one request (vLLM writes to them, so
        never shared), without the free whitespace a small model spends tokens on."""
        if schema is None:
            return None
        return self._structured(json=schema, disable_any_whitespace=True)

