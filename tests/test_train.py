"""The trainer's loop run in this process (one rank, gloo) on real rollouts and the real
model: the KL to the reference, an estimator registered by a test, the health metrics.

In-process (not through submitit) so that an estimator registered here is the one the
loop looks up; the job around `train` is tested in test_update.py and test_update_dist.py.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from bench.servers import free_port
from rlver import config
from rlver.registry import ADV_ESTIMATORS
from rlver.train.trainer import train

from .helpers import update_spec

pytestmark = pytest.mark.slow

ONE_STEP = ["iterations=1", "algorithm.lr=1e-5", "algorithm.micro_batch_size=2",
            "algorithm.keep_state_iterations=0"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A one-rank process group for the module's updates (train joins it)."""
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    threads = torch.get_num_threads()
    wd = tmp_path_factory.mktemp("train")
    yield wd
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    torch.set_num_threads(threads)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    shutil.rmtree(wd, ignore_errors=True)


def update(workdir: Path, base_model: Path, rows: list[dict], name: str,
           *overrides: str) -> dict:
    """Iteration 0's update of a run `name` whose rollouts are `rows`, in this process."""
    spec = update_spec(workdir, base_model, rows, name, *ONE_STEP, *overrides)
    return train(spec, config.load(spec.config_path))


LOW_TEMPERATURE = "rollout.temperature=0.3"


@pytest.fixture(scope="module")
def without_kl(workdir, base_model, rows) -> dict:
    return update(workdir, base_model, rows, "no_kl", LOW_TEMPERATURE)


def test_kl_to_an_identical_reference_is_zero_at_a_low_temperature(workdir, base_model, rows,
                                                                  without_kl):
    """The reference's log-probs are taken at the sampling temperature, like the policy's:
    at the first step, where the policy is the reference, the KL term is 0 and the step
    (its loss, its gradient) is the one without a KL term."""
    with_kl = update(workdir, base_model, rows, "kl", LOW_TEMPERATURE, "algorithm.kl_coef=0.5")
    first, plain = with_kl["steps"][0], without_kl["steps"][0]
    assert abs(first["kl_ref"]) < 1e-6, first
    assert first["loss"] == pytest.approx(plain["loss"], rel=1e-6, abs=1e-8)
    assert first["grad_norm"] == pytest.approx(plain["grad_norm"], rel=1e-5)
    assert first["approx_kl"] == pytest.approx(plain["approx_kl"], rel=1e-5, abs=1e-9)


@pytest.fixture(scope="module")
def recomputed(workdir, base_model, rows) -> dict:
    return update(workdir, base_model, rows, "recompute", "algorithm.old_logprobs=recompute",
                  "algorithm.rollout_is=tis")


def test_recomputed_old_logprobs_make_the_first_steps_ratio_exactly_one(recomputed):
    """algorithm.old_logprobs=recompute: the trainer's no-grad pass gives the old
    log-probs, on the first step's own micro-batches, so that step's ratio is exactly 1
    (no token clipped, approx KL 0), whatever the engine recorded; the gap to the
    engine's log-probs is logged, and with tis the weights."""
    got = recomputed
    first = got["steps"][0]
    assert first["approx_kl"] == 0.0 and first["clip_frac"] == 0.0, first
    assert got["approx_kl_first_step"] == 0.0 and got["clip_fraction_first_step"] == 0.0
    # the rows were sampled by the hf engine from this policy at this temperature: a
    # gap in the last bits only
    assert 0 < got["logp_gap_mean"] <= got["logp_gap_max"] < 1e-3, got
    assert 0 <= got["rollout_kl"] < 1e-6
    assert got["rollout_is_weight_mean"] == pytest.approx(1.0, abs=1e-3)
    assert got["rollout_is_capped_share"] == 0.0


def test_without_the_pass_the_first_steps_forward_gives_the_gap(workdir, base_model, rows,
                                                                 recomputed):
    """old_logprobs=rollout, no correction: no no-grad pass; the first step's own forward
    gives the trainer's log-probs of its rows, the pass's very values: with one step per
    epoch the gap equals that of `recompute` (which runs the pass) over the same tokens;
    with two mini-batches it is measured on the first step's tokens only."""
    keys = ("logp_gap_mean", "logp_gap_max", "rollout_kl", "logp_gap_tokens")
    plain = update(workdir, base_model, rows, "gap_first_step")
    assert {k: plain[k] for k in keys} == {k: recomputed[k] for k in keys}
    assert plain["logp_gap_tokens"] == plain["num_tokens"]
    halves = update(workdir, base_model, rows, "gap_halves", "algorithm.mini_batches=2")
    assert len(halves["steps"]) == 2
    assert halves["logp_gap_tokens"] == halves["steps"][0]["tokens"] < halves["num_tokens"]
    assert 0 < halves["logp_gap_mean"] < 1e-3


def test_an_estimator_registered_by_name_runs_an_update(workdir, base_model, rows):
    """One function and one registration: the config accepts the name, the loop uses it."""

    def reward_minus_half(batch, alg):
        return [{"adv": torch.full((len(units[0].positions),), units[0].to_go - 0.5)}
                for units in batch.units]

    ADV_ESTIMATORS.register("reward_minus_half", reward_minus_half)
    try:
        metrics = update(workdir, base_model, rows, "registered",
                         "algorithm.adv_estimator=reward_minus_half")
    finally:
        ADV_ESTIMATORS.unregister("reward_minus_half")
    # rows' rewards alternate 0.2 and 0.8: every token's advantage is -0.3 or +0.3
    assert metrics["adv_min"] == pytest.approx(-0.3, abs=1e-6)
    assert metrics["adv_max"] == pytest.approx(0.3, abs=1e-6)
    assert metrics["grad_norm"] > 0
    with pytest.raises(Exception, match="adv_estimator.*gae, grpo"):
        config.compose("smoke", ["algorithm.adv_estimator=reward_minus_half"])


def test_update_metrics_report_the_runs_health(rows, without_kl):
    metrics = without_kl
    replies = [r for row in rows for r in row["truncated"]]
    want = {"reply_length_mean", "reply_length_max", "truncated_share", "zero_spread_groups",
            "adv_mean", "adv_std", "adv_min", "adv_max"}
    assert want <= metrics.keys() and want <= metrics["steps"][0].keys()
    gap = {"logp_gap_mean", "logp_gap_max", "rollout_kl", "clip_fraction_first_step",
           "approx_kl_first_step"}
    assert gap <= metrics.keys() and metrics["excluded_error_rows"] == 0
    assert metrics["clip_fraction_first_step"] == metrics["steps"][0]["clip_frac"]
    assert metrics["truncated_share"] == pytest.approx(sum(replies) / len(replies))
    assert 0 < metrics["reply_length_mean"] <= metrics["reply_length_max"] <= 12
    assert metrics["zero_spread_groups"] == 0.0  # rows' rewards differ within each group
    outcomes = {r["outcome"] for r in rows}
    assert {f"reward_{o}" for o in outcomes} <= metrics.keys()
