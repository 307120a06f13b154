"""Resolve the GPU environment's pip set against PyPI without installing it.

    python3 tools/check_gpu_env.py        # what `make check-gpu-env` runs

Reads the pip entries of environment.yml (the package with its `gpu` extra: vLLM's CUDA
build, the torch it pins, DeepSpeed), resolves them with `pip install --dry-run
--ignore-installed --report` in a throw-away virtual environment, and fails on any
conflict. Only PyPI's metadata is fetched (and DeepSpeed's source archive, whose
metadata is built); nothing is installed. pip runs against PyPI alone, with no
configuration file and no PIP_* variable, so a machine's own pip set-up (local wheel
folders, version caps) cannot change the answer. The resolution is for this interpreter
and platform, so it must be the one environment.yml names (CPython 3.11, Linux x86_64).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV_FILE = ROOT / "environment.yml"
INDEX = "https://pypi.org/simple"
#: The resolver the check runs: pip 23.2 (Python 3.11's bundled one) reports a false
#: conflict on nvidia-cutlass-dsl's extras for this set after 4 minutes of backtracking.
PIP = "pip==26.3"
#: The packages whose versions the check reports (and the extra pins).
KEY_PACKAGES = ("torch", "vllm", "deepspeed", "transformers", "nvidia-nccl-cu13")


def environment_pins(text: str) -> tuple[str, list[str]]:
    """(python version, pip arguments) of an environment.yml's `python=` and `pip:` list."""
    python = re.search(r"^\s*-\s*python=([\d.]+)\s*$", text, re.M)
    if python is None:
        sys.exit(f"check-gpu-env: {ENV_FILE}: no 'python=X.Y' dependency. "
                 "Fix: pin the Python version there.")
    args: list[str] = []
    in_pip = False
    for line in text.splitlines():
        if re.match(r"^\s*-\s*pip:\s*$", line):
            in_pip = True
            continue
        entry = re.match(r"^\s{4,}-\s+(.+?)\s*(#.*)?$", line)
        if in_pip and entry:
            args.extend(entry.group(1).split(maxsplit=1))
        elif in_pip and line.strip():
            in_pip = False
    if not args:
        sys.exit(f"check-gpu-env: {ENV_FILE}: no pip entries. Fix: list the pip set under "
                 "'- pip:'.")
    return python.group(1), args


def main() -> int:
    python, args = environment_pins(ENV_FILE.read_text())
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if (here, sys.platform, platform.machine()) != (python, "linux", "x86_64"):
        sys.exit(f"check-gpu-env: environment.yml is for CPython {python} on Linux x86_64; "
                 f"this is {here} on {sys.platform} {platform.machine()}, which would resolve "
                 f"another set. Fix: make check-gpu-env PYTHON=python{python}")
    # pip builds the package's metadata in the source tree: leave no egg-info behind.
    had_egg_info = set(ROOT.glob("*.egg-info"))
    try:
        return _resolve(args, here)
    finally:
        for made in set(ROOT.glob("*.egg-info")) - had_egg_info:
            shutil.rmtree(made, ignore_errors=True)


def _resolve(args: list[str], here: str) -> int:
    """pip's dry run of `args` in a throw-away venv; 0 when the set resolves."""
    t = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # no global, site or user pip.conf either
    with tempfile.TemporaryDirectory(prefix="rlver-gpu-env-") as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "--isolated",
               "--disable-pip-version-check"]
        subprocess.run([*pip, "install", "--index-url", INDEX, "--quiet", PIP], check=True,
                       env=env)
        report = Path(tmp) / "report.json"
        cmd = [*pip, "install", "--index-url", INDEX, "--dry-run", "--ignore-installed",
               "--report", str(report), *args]
        print("check-gpu-env: pip install --dry-run --ignore-installed " + " ".join(args)
              + f" (against {INDEX})",
              flush=True)
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            # pip's explanation ("The conflict is caused by: ...") ends its output.
            lines = [ln for ln in (done.stdout + done.stderr).splitlines()
                     if "━" not in ln and not ln.startswith(
                         ("Collecting", "  Downloading", "  Using cached", "Obtaining",
                          "  Installing", "  Getting", "  Preparing", "  Checking"))]
            print("\n".join(lines[-30:]), file=sys.stderr)
            print(f"check-gpu-env: FAILED: the pip set of {ENV_FILE.name} does not resolve "
                  "(pip's message above). Fix: change the pins of the `gpu` extra in "
                  "pyproject.toml to versions that agree (vLLM pins torch exactly).",
                  file=sys.stderr)
            return 1
        installs = json.loads(report.read_text())["install"]
    versions = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"]
                for i in installs}
    keys = ", ".join(f"{k} {versions[k]}" for k in KEY_PACKAGES if k in versions)
    print(f"check-gpu-env: OK: {len(versions)} packages resolve for CPython {here} Linux "
          f"x86_64 ({keys}) in {time.perf_counter() - t:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
