"""`rlver budget` and the cost model (rlver/cost.py): the formulas against hand-computed
numbers, the tables of the paper experiments, and docs/scale.md's printed budgets, which
must be what the package computes today."""

from __future__ import annotations

import re
import shlex
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from rlver import budget, config, cost
from rlver.cli import main

from .helpers import ROOT


def _budget(experiment: str, *overrides: str) -> budget.Budget:
    return budget.make_budget(config.compose(experiment, list(overrides),
                                             require_user_keys=False))


def _workload(**kw: object) -> cost.Workload:
    base = dict(params=1e9, policy_bytes_per_param=2, models=1, precision="bf16",
                zero_stage=2, dialogues=10, turns=2, reply_tokens=100, think=False, epochs=1,
                iterations=10, evaluations=3, eval_dialogues=5, eval_turns=3,
                eval_reply_tokens=50, keep_state=1, kept_policies=3)
    return cost.Workload(**(base | kw))  # type: ignore[arg-type]


LAYOUT = cost.Layout("per stage, update 1x4", update_gpus=4, rollout_gpus=1, evaluate_gpus=1,
                     shards=2)


def test_an_iteration_per_stage_by_hand() -> None:
    """Every item of a per-stage iteration and its GPU-hours, from the inputs' values."""
    inp = cost.load_inputs()
    w = _workload()
    est = cost.estimate(w, LAYOUT, inp)
    items = {(i.stage, i.label.split(" (")[0]): i.seconds for i in est.per_iteration()}
    fs = inp["shared_fs_bytes_per_s"]
    state = (2 + 12) * 1e9  # bf16 weights + fp32 master and moments
    assert items["update", "state load"] == pytest.approx(state / fs)  # a fit's a < 0: 0
    assert items["update", "policy load"] == pytest.approx(2e9 / fs)
    assert items["rollout", "generate"] == pytest.approx(2 * 100 * inp["decode_s_per_token"])
    assert items["simulated user", "answers"] == pytest.approx(2 * inp["simulator_s_per_turn"])
    tokens = 10 * (300 + 2 * (100 + 150))  # nothink: one row of the whole dialogue
    assert items["update", "train"] == pytest.approx(
        6 * 1e9 * tokens / (inp["train_flops_per_gpu_s"] * 4))
    rollout_s = sum(i.seconds for i in est.per_iteration()
                    if i.job == "rollout" and i.kind != "queue")
    update_s = sum(i.seconds for i in est.per_iteration()
                   if i.job == "update" and i.kind != "queue")
    assert est.gpu_h_per_iteration() == pytest.approx((2 * rollout_s + 4 * update_s) / 3600)
    wall = sum(i.seconds for i in est.per_iteration())
    assert est.wall_s_run() == pytest.approx(10 * wall + cost.seconds(est.evaluation))


def test_think_trains_a_row_per_turn_and_ppo_two_models() -> None:
    inp = cost.load_inputs()
    nothink = cost.estimate(_workload(), LAYOUT, inp)
    think = cost.estimate(_workload(think=True), LAYOUT, inp)
    ppo = cost.estimate(_workload(models=2), LAYOUT, inp)

    def train(e: cost.Estimate) -> float:
        return next(i.seconds for i in e.iteration if i.label == "train")

    # rows of 300 + 250 and 300 + 500 tokens against one of 300 + 500
    assert train(think) / train(nothink) == pytest.approx((550 + 800) / 800)
    assert train(ppo) == pytest.approx(2 * train(nothink))
    fixed = [i.label for i in ppo.iteration if i.kind == "fixed" and "state" in i.label]
    assert len(fixed) == 2
    no_state = cost.estimate(_workload(keep_state=0), LAYOUT, inp)
    assert not [i for i in no_state.iteration if "state" in i.label]


def test_resident_blocks_pay_their_start_once_a_block() -> None:
    inp = cost.load_inputs()
    w = _workload(iterations=12)
    one = cost.estimate(w, cost.Layout("k12", 4, 1, 1, 2, block=12), inp)
    three = cost.estimate(w, cost.Layout("k4", 4, 1, 1, 2, block=4), inp)
    start = cost.seconds(one.block_start)
    for e, blocks in ((one, 1), (three, 3)):
        assert cost.seconds(e.per_iteration()) - cost.seconds(e.iteration) == pytest.approx(
            blocks * start / 12)
    save = {e.layout.block: next(i.seconds for i in e.iteration if "state save" in i.label)
            for e in (one, three)}
    assert save[4] == pytest.approx(3 * save[12])  # saved at each block's end only
    assert one.gpus == {"block": 4}
    assert one.gpu_h_run() == pytest.approx(
        (12 * 4 * sum(i.seconds for i in one.per_iteration() if i.kind != "queue")
         + 3 * 4 * cost.seconds(one.evaluation)) / 3600)


def test_update_memory_under_zero() -> None:
    """ZeRO-2 on 8 GPUs: bf16 weights whole, gradients and optimizer partitioned."""
    inp = cost.load_inputs()
    w = _workload(params=7.62e9, models=2)
    assert cost.update_memory_per_gpu(w, inp, 8) == pytest.approx(
        2 * 7.62e9 * (2 + 2 / 8 + 12 / 8))
    assert cost.update_memory_per_gpu(replace(w, zero_stage=3), inp, 8) == pytest.approx(
        2 * 7.62e9 * 16 / 8)


def test_disk_at_the_peak_and_at_the_end() -> None:
    inp = cost.load_inputs()
    d = dict((name, (peak, end)) for name, peak, end in cost.disk(_workload(), inp).rows)
    assert d["base model"] == (2e9, 2e9)
    assert d["kept policies"] == (4 * 2e9, 2 * 2e9)  # 3 kept, iteration 0's are links
    assert d["optimizer state"] == (2 * 14e9, 0)  # one read while the next is written
    per_token = inp["stored_bytes_per_token"]
    assert d["rollouts"][0] == pytest.approx(10 * 10 * 800 * per_token)


def test_a_served_simulator_is_priced_from_its_keys() -> None:
    """simulator=served: its GPUs a replica times its replicas, held for the whole run,
    priced before its model's path is given (a paper experiment's budget); another
    backend (an endpoint of yours), nothing."""
    served = OmegaConf.create({"simulator": {"backend": "served", "serve": {
        "model_path": "", "gpus": 4, "replicas": 2}}})
    assert budget.served_simulator_gpus(served) == 8
    assert budget.served_simulator_gpus(OmegaConf.create({"simulator": {}})) == 0
    elsewhere = {"simulator": {"backend": "llm_http", "serve": {"gpus": 4}}}
    assert budget.served_simulator_gpus(OmegaConf.create(elsewhere)) == 0
    on_cpus = {"simulator": {"backend": "served", "serve": {"gpus": 0, "tensor_parallel": 1}}}
    assert budget.served_simulator_gpus(OmegaConf.create(on_cpus)) == 0
    assert budget.served_simulator_gpus(config.compose("smoke")) == 0
    paper = config.compose("paper_grpo_think_vanilla", [], require_user_keys=False)
    assert paper.simulator.serve.model_path == ""
    assert budget.served_simulator_gpus(paper) == 4
    inp = cost.load_inputs()
    plain = cost.estimate(_workload(), LAYOUT, inp)
    with_sim = cost.estimate(_workload(), cost.Layout(
        "x", 4, 1, 1, 2, simulator_gpus=8), inp)
    assert with_sim.gpu_h_run() - plain.gpu_h_run() == pytest.approx(
        8 * plain.wall_s_run() / 3600)


@pytest.mark.parametrize("experiment", ["paper_ppo_think_vanilla", "paper_grpo_think_vanilla"])
def test_budget_of_a_paper_experiment(experiment: str, capsys) -> None:
    assert main(["budget", "--experiment", experiment]) == 0
    out = capsys.readouterr().out
    for stage in budget.STAGES:
        assert re.search(rf"^{stage} +\S+ ", out, re.M), stage
    assert "fixed costs: 0." in out and "peak GB" in out
    b = _budget(experiment)
    assert f"{b.own.gpu_h_run():.0f}" in out.split("\ntotal")[1].splitlines()[0]
    names = [e.layout.name for e in b.estimates]
    assert names[0] == "per stage, update 4x8" and "per stage, update 1x8" in names
    assert any(n.startswith("resident blocks of") for n in names)
    assert min(e.gpu_h_run() for e in b.estimates[1:]) < b.own.gpu_h_run()


def test_a_models_parameters_come_from_its_headers(base_model: Path) -> None:
    cfg = config.compose("smoke", ["cluster=slurm", f"model.source={base_model}"])
    params, where = budget.parameters(cfg)
    assert params == 134515008 and "safetensors" in where


def test_docs_scale_prints_what_the_package_computes(capsys) -> None:
    """docs/scale.md's budgets (its `$ rlver budget ...` blocks) are what the command
    prints today: after a change of the model or its data, rerun each command and paste
    its output there."""
    text = (ROOT / "docs" / "scale.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```\n\$ (rlver budget [^\n]*)\n(.*?)```", text, re.S)
    assert len(blocks) >= 2, "docs/scale.md prints no `$ rlver budget` output"
    for command, printed in blocks:
        assert main(shlex.split(command)[1:]) == 0
        assert capsys.readouterr().out == printed, (
            f"docs/scale.md: the output of `{command}` changed; rewrite the blocks with "
            "python tools/docs_budget.py")


def test_bench_scale_writes_the_models_measured_inputs(tmp_path: Path) -> None:
    """bench/scale.py's fits go into measured.yaml (here a copy), which the model reads."""
    from bench import scale

    path = tmp_path / "measured.yaml"
    path.write_text((ROOT / "rlver" / "data" / "cost" / "measured.yaml").read_text())
    fits = {"state load": {"intercept_s": 1.5, "slope_s": 2e-9, "per": "bytes", "how": "fit",
                           "rate_per_s": 5e8}}
    scale.write_measured({"submitit": {"submit_to_start_s": 0.31}, "command": "c",
                          "date": "d"}, fits, path)
    data = yaml.safe_load(path.read_text())
    assert data["fits"] == {"state load": {"intercept_s": 1.5, "slope_s": 2e-9, "per": "bytes",
                                           "how": "fit"}}
    assert data["constants"]["submitit_submit_to_start_s"]["value"] == 0.31
    assert "stored_bytes_per_token" in data["constants"]
    assert path.read_text().startswith("# What bench/scale.py measured")


@pytest.mark.parametrize("heading", ["## The paper's experiments at 7B", "### LoRA at 7B"])
def test_docs_scale_says_only_numbers_its_budgets_print(heading: str) -> None:
    """The prose of docs/scale.md's sections on the 7B runs (full weights, LoRA) quotes
    the `rlver budget` outputs printed on the page: a number there that no output prints
    is one the model no longer gives."""
    text = (ROOT / "docs" / "scale.md").read_text(encoding="utf-8")
    section = re.split(r"\n##+ ", text.split(heading)[1])[0]
    blocks = "".join(re.findall(r"```\n(\$ rlver budget .*?)```", text, re.S))
    prose = re.sub(r"```\n.*?```", "", section, flags=re.S)
    printed = {n.replace(",", "") for n in re.findall(r"\d[\d,]*(?:\.\d+)?", blocks)}
    said = {n.replace(",", "") for n in re.findall(r"(?<![\w.-])\d[\d,]*(?:\.\d+)?", prose)}
    assert said and not said - printed, sorted(said - printed)


def test_budget_as_json(capsys) -> None:
    import json

    assert main(["budget", "--experiment", "paper_grpo_think_vanilla", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    own = data["layouts"][0]
    assert own["how"] == "this config" and set(own["stages"]) == set(budget.STAGES)
    assert own["gpu_hours_run"] == pytest.approx(_budget("paper_grpo_think_vanilla")
                                                 .own.gpu_h_run())
    assert data["disk_gb"]["peak"] > data["disk_gb"]["end"] > 0
    assert data["workload"]["iterations"] == 1000
