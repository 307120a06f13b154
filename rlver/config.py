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
from rlver.config_checks import validate
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
FREE_FORM = ("rollout.vllm_args", "simulator.serve.vllm_args",
             "cluster.slurm_additional_parameters")


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
                              "simulator.transcript_chars": 6000,
                              "simulator.message_chars": 2000,
                              "algorithm.old_logprobs": "rollout",
                              "algorithm.rollout_is": "none", "algorithm.rollout_is_cap": 2.0,
                              "retention": dataclasses.asdict(RetentionConfig()),
                              "cluster.retention": _JOB_DEFAULTS,
                              "logging": dataclasses.asdict(LoggingConfig()),
                              "model.sha256": "", "model.lora": None,
                              "simulator.serve": dataclasses.asdict(ServeConfig()),
                              "algorithm.gradient_checkpointing": False,
                              "rollout.max_sentences": None, "evaluation.max_sentences": None}


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
