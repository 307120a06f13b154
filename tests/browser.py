"""A page in headless Chromium (Debian's `chromium`), driven over the Chrome DevTools
protocol on the pipe Chromium opens with --remote-debugging-pipe (file descriptors 3 and
4, messages ended by a NUL byte): no Python package, no driver binary, no port.

What the page logs as an error comes from three DevTools domains, the ones DevTools'
own console shows: Runtime.consoleAPICalled (console.error / console.assert),
Runtime.exceptionThrown (uncaught exceptions) and Log.entryAdded (the browser's own
errors: a resource that fails to load, a blocked request, a violation).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
INSTALL = "apt-get install -y chromium (Debian's package; .ci/run installs it)"
#: Headless, no sandbox (root in CI), nothing that reaches out to the network.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-default-apps", "--mute-audio", "--remote-debugging-pipe"]


def require_chromium() -> None:
    """Skip without Chromium here; fail without it in CI (CI=true), which installs it."""
    if Path(CHROMIUM).is_file():
        return
    message = f"headless Chromium not found at {CHROMIUM}; install it: {INSTALL}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class Page:
    """What a loaded page showed: its errors, figures, tables and a screenshot (PNG)."""

    errors: list[str]
    images: list[dict[str, Any]]
    tables: int
    headings: list[str]
    links: list[str]
    screenshot: bytes = field(repr=False)


class _Session:
    """Commands and events over the DevTools pipe."""

    def __init__(self, proc: subprocess.Popen[bytes], to_browser: int, from_browser: int):
        self.proc, self.out, self.inp = proc, to_browser, from_browser
        self.buffer = b""
        self.events: list[dict[str, Any]] = []
        self.next_id = 0

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.inp], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer over the DevTools pipe")
            chunk = os.read(self.inp, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium closed the DevTools pipe (exit {self.proc.poll()})")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        decoded: dict[str, Any] = json.loads(message)
        return decoded

    def send(self, method: str, session: str | None = None, timeout: float = 60,
             **params: Any) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self.out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._read(deadline))


def _errors(events: list[dict[str, Any]]) -> list[str]:
    out = []
    for e in events:
        params = e.get("params", {})
        if e.get("method") == "Runtime.consoleAPICalled" and params["type"] in ("error",
                                                                                  "assert"):
            out.append("console." + params["type"] + ": " + " ".join(
                str(a.get("value", a.get("description", ""))) for a in params["args"]))
        elif e.get("method") == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            out.append("exception: " + details.get("exception", {}).get(
                "description", details.get("text", "")))
        elif e.get("method") == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            out.append(f"{entry['source']}: {entry['text']} {entry.get('url', '')}".strip())
    return out


#: Run in the page once it has loaded: its figures, tables, headings and links.
_INSPECT = """JSON.stringify({
  images: [...document.images].map(i => ({alt: i.alt, complete: i.complete,
           naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight})),
  tables: document.querySelectorAll("table").length,
  headings: [...document.querySelectorAll("h2")].map(h => h.textContent),
  links: [...document.querySelectorAll("a[href]")].map(a => a.getAttribute("href")),
  height: document.documentElement.scrollHeight,
})"""


def open_page(path: Path, width: int = 1200, timeout: float = 120) -> Page:
    """Load the local file `path` in a fresh headless Chromium and inspect it."""
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()

    def pipes_at_3_and_4() -> None:
        # Moved above 9 first: either pipe end may itself be descriptor 3 or 4.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w)]
        os.dup2(high[0], 3)
        os.dup2(high[1], 4)

    with tempfile.TemporaryDirectory(prefix="rlver-chromium-") as profile:
        proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}",
             f"--window-size={width},900", "about:blank"],
            preexec_fn=pipes_at_3_and_4, pass_fds=(3, 4),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        cdp = _Session(proc, to_browser_w, from_browser_r)
        try:
            page = next(t for t in cdp.send("Target.getTargets", timeout=timeout)["targetInfos"]
                        if t["type"] == "page")
            session = cdp.send("Target.attachToTarget", targetId=page["targetId"],
                               flatten=True)["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                cdp.send(f"{domain}.enable", session)
            cdp.send("Page.navigate", session, url=path.resolve().as_uri())
            cdp.wait_for("Page.loadEventFired", timeout)
            found = json.loads(cdp.send("Runtime.evaluate", session, expression=_INSPECT,
                                        returnByValue=True)["result"]["value"])
            shot = cdp.send("Page.captureScreenshot", session, format="png",
                            captureBeyondViewport=True,
                            clip={"x": 0, "y": 0, "width": width,
                                  "height": found["height"], "scale": 1})
            cdp.send("Browser.close")
            return Page(_errors(cdp.events), found["images"], found["tables"],
                        found["headings"], found["links"], base64.b64decode(shot["data"]))
        finally:
            os.close(to_browser_w)
            os.close(from_browser_r)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


#: The sections of a run report (rlver.reporting.report) and its tables at least: the
#: configuration, iterations, paper-style table, training health and outcomes.
REPORT_SECTIONS = ["Configuration", "Iterations", "Paper-style table", "Learning curve",
                   "Training health", "Outcomes", "Emotion trajectories"]
REPORT_TABLES = 5
REPORT_FIGURES = 4


def check_report(index: Path) -> Page:
    """Open a run report and check it as a reader would see it: no console error, every
    figure decoded, every section and table there, every link to a file of the report."""
    require_chromium()
    page = open_page(index)
    assert page.errors == [], page.errors
    assert len(page.images) == REPORT_FIGURES, page.images
    assert all(i["complete"] and i["naturalWidth"] > 0 for i in page.images), page.images
    assert page.headings[:len(REPORT_SECTIONS)] == REPORT_SECTIONS, page.headings
    assert page.tables >= REPORT_TABLES, page.tables
    assert all((index.parent / link).is_file() for link in page.links), page.links
    return page
