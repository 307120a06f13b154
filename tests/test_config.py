from __future__ import annotations

from datetime import datetime, timezone

import pytest

from rlver import config, snakemake_config
from rlver.errors import RlverInputError


def test_smoke_composes_with_its_values():
    cfg = config.compose("smoke")
    assert cfg.run == "smoke" and cfg.experiment == "smoke"
    assert cfg.iterations == 2 and cfg.rollout.shards == 2
    assert cfg.rollout.personas_per_iteration * cfg.rollout.samples_per_persona == 16
    assert cfg.simulator.backend == "heuristic"


def test_overrides_and_run_name():
    cfg = config.compose("smoke", ["rollout.shards=4", "algorithm.lr=0.001"], run="mine")
    assert cfg.rollout.shards == 4 and cfg.algorithm.lr == 0.001 and cfg.run == "mine"


def test_unknown_key_is_named():
    with pytest.raises(RlverInputError, match="rollout.bogus"):
        config.compose("smoke", ["rollout.bogus=1"])


def test_unknown_experiment_is_named():
    with pytest.raises(RlverInputError, match="no_such_experiment"):
        config.compose("no_such_experiment")


def test_bad_value_is_named():
    with pytest.raises(RlverInputError, match="algorithm.zero_stage"):
        config.compose("smoke", ["algorithm.zero_stage=7"])
    with pytest.raises(RlverInputError, match="rollout.shards"):
        config.compose("smoke", ["rollout.shards=notanumber"])


def test_freeze_refuses_changed_config_with_differing_keys(tmp_path):
    path = tmp_path / "config.yaml"
    cfg = config.compose("smoke")
    config.freeze(cfg, path)
    config.freeze(cfg, path)  # same config: continuing is fine
    changed = config.compose("smoke", ["rollout.shards=3", "seed=5"])
    with pytest.raises(RlverInputError) as err:
        config.freeze(changed, path)
    msg = str(err.value)
    assert "rollout.shards: frozen 2 -> now 3" in msg and "seed: frozen 0 -> now 5" in msg
    assert "new run name" in msg
    assert config.load(path).rollout.shards == 2


def test_extendable_keys_change_and_each_change_is_recorded(tmp_path):
    path = tmp_path / "config.yaml"
    cfg = config.compose("smoke")
    config.freeze(cfg, path)
    frozen_text = path.read_text()
    longer = config.compose("smoke", ["iterations=3", "evaluation.every=2"])
    config.freeze(longer, path)
    config.freeze(longer, path)  # continuing as changed records nothing more
    # The frozen file and the stamp of every output stay: nothing already made is redone.
    assert path.read_text() == frozen_text
    loaded = config.load(path)
    assert (loaded.iterations, loaded.evaluation.every) == (3, 2)
    assert config.run_hash(path) == config.config_hash(cfg)
    assert config.schedule_iterations(path) == 2  # the warm-up as planned at the start
    changes = config.recorded_changes(path)
    assert [(c["key"], c["frozen"], c["now"]) for c in changes] == [
        ("evaluation.every", 1, 2), ("iterations", 2, 3)]
    assert all(datetime.fromisoformat(c["time"]).tzinfo == timezone.utc for c in changes)


def test_fewer_iterations_and_other_keys_stay_refused(tmp_path):
    path = tmp_path / "config.yaml"
    config.freeze(config.compose("smoke", ["iterations=3"]), path)
    with pytest.raises(RlverInputError, match="iterations: frozen 3 -> now 2"):
        config.freeze(config.compose("smoke"), path)
    with pytest.raises(RlverInputError) as err:
        config.freeze(config.compose("smoke", ["iterations=4", "rollout.shards=3"]), path)
    assert "rollout.shards: frozen 2 -> now 3" in str(err.value)
    assert "iterations:" not in str(err.value) and "iterations only upwards" in str(err.value)
    assert config.recorded_changes(path) == []


def test_a_damaged_change_record_is_named(tmp_path):
    path = tmp_path / "config.yaml"
    config.freeze(config.compose("smoke"), path)
    (tmp_path / "config_changes.yaml").write_text("changes: [{key: seed, now: 3}]\n")
    with pytest.raises(RlverInputError, match="config_changes.yaml: field changes"):
        config.load(path)


def test_load_roundtrip_and_hash_is_stable(tmp_path):
    cfg = config.compose("smoke")
    config.freeze(cfg, tmp_path / "c.yaml")
    loaded = config.load(tmp_path / "c.yaml")
    assert config.config_hash(loaded) == config.config_hash(cfg)
    assert config.config_hash(config.compose("smoke", ["seed=1"])) != config.config_hash(cfg)


def test_load_refuses_missing_and_invalid(tmp_path):
    with pytest.raises(RlverInputError, match="not found"):
        config.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rollout:\n  bogus: 1\n")
    with pytest.raises(RlverInputError, match="bogus"):
        config.load(bad)


def test_derive_seed_is_stable_and_distinct():
    assert config.derive_seed(0, 1, "shard", 2) == config.derive_seed(0, 1, "shard", 2)
    assert config.derive_seed(0, 1, "shard", 2) != config.derive_seed(0, 1, "shard", 3)
    assert 0 <= config.derive_seed("x") < 2**63


def test_snakemake_config_entries_become_overrides():
    experiment, run, overrides = snakemake_config.snakemake_overrides({
        "experiment": "smoke", "run": "r1", "overrides": "rollout.shards=4 seed=1",
        "rollout": {"batch_size": "8"}, "template": {"system_prompt": "Be kind, it's ok"},
    })
    assert (experiment, run) == ("smoke", "r1")
    assert overrides[:2] == ["rollout.shards=4", "seed=1"]
    cfg = config.compose(experiment, overrides, run=run)
    assert cfg.rollout.shards == 4 and cfg.seed == 1 and cfg.rollout.batch_size == 8
    assert cfg.template.system_prompt == "Be kind, it's ok"
    assert snakemake_config.snakemake_overrides({}) == ("smoke", None, [])


def test_engine_arguments_and_sbatch_options_take_new_keys_in_every_form():
    """rollout.vllm_args and cluster.slurm_additional_parameters are handed on as they are:
    a key they do not hold yet is set by a plain override, a mapping, or Snakemake's
    --config mapping (docs/cluster.md), not refused as unknown."""
    forms = [
        ["rollout.vllm_args.block_size=32", "rollout.vllm_args.enforce_eager=true"],
        ["rollout.vllm_args={block_size: 32, enforce_eager: true}"],
        snakemake_config.snakemake_overrides(
            {"rollout": {"vllm_args": {"block_size": 32, "enforce_eager": True}}})[2],
        ["+rollout.vllm_args.block_size=32", "++rollout.vllm_args.enforce_eager=true"],
    ]
    for overrides in forms:
        cfg = config.compose("smoke", overrides)
        assert dict(cfg.rollout.vllm_args) == {"block_size": 32, "enforce_eager": True}
    _, _, overrides = snakemake_config.snakemake_overrides(
        {"cluster": {"slurm_additional_parameters": {"constraint": "a100", "exclusive": True}}})
    cfg = config.compose("smoke", overrides)
    assert dict(cfg.cluster.slurm_additional_parameters) == {"constraint": "a100",
                                                              "exclusive": True}
    with pytest.raises(RlverInputError, match="rollout.bogus"):  # other keys stay typed
        config.compose("smoke", ["rollout.bogus.x=1"])


def test_keys_added_later_keep_older_runs_valid(tmp_path):
    """A run frozen before a key existed (a file without it) keeps the hash its stages
    recorded, and its freeze is not refused, while the key is at its default; set to
    anything else, the key is frozen and hashed."""
    import hashlib
    import json

    from omegaconf import OmegaConf

    cfg = config.compose("smoke")
    before = OmegaConf.to_container(cfg, resolve=True)
    for dotted in config.ADDED_KEYS:  # what the code of the time froze and hashed
        *parents, leaf = dotted.split(".")
        node = before
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            del node[leaf]
    old = tmp_path / "config.yaml"
    old.write_text(OmegaConf.to_yaml(OmegaConf.create(before)))
    blob = json.dumps(before, sort_keys=True, separators=(",", ":"))
    recorded = hashlib.sha256(blob.encode()).hexdigest()[:16]
    assert config.config_hash(config.load(old)) == config.config_hash(cfg) == recorded
    config.freeze(cfg, old)  # not refused
    assert "greedy_per_group" not in config.to_yaml(cfg)

    greedy = config.compose("smoke", ["rollout.greedy_per_group=1"])
    assert "greedy_per_group: 1" in config.to_yaml(greedy)
    assert config.config_hash(greedy) != recorded
    with pytest.raises(RlverInputError, match="rollout.greedy_per_group"):
        config.freeze(greedy, old)


def test_keep_policies_takes_evaluated_or_all():
    assert config.compose("smoke").algorithm.keep_policies == "evaluated"
    assert config.compose("smoke", ["algorithm.keep_policies=all"]).algorithm.keep_policies == "all"
    with pytest.raises(RlverInputError,
                       match="algorithm.keep_policies must be one of: evaluated, all"):
        config.compose("smoke", ["algorithm.keep_policies=none"])


def test_a_run_frozen_by_an_earlier_release_continues(tmp_path):
    """The smoke run's config as an earlier release froze it (its hash, recorded in every
    file its stages wrote, is in the name): a key added since without an ADDED_KEYS entry
    would change the hash and refuse to continue every existing run."""
    import shutil
    from pathlib import Path

    data = Path(__file__).parent / "data" / "frozen-smoke-e216ab4b3965fcf8.yaml"
    frozen = tmp_path / "config.yaml"
    shutil.copy(data, frozen)
    assert config.config_hash(config.load(frozen)) == "e216ab4b3965fcf8"
    config.freeze(config.compose("smoke"), frozen)  # not refused


def test_the_recorded_base_model_sha_is_frozen_but_not_hashed(tmp_path):
    """model.sha256 goes into the frozen file (a run continues only on those weights) and
    not into the hash every output carries: recording it changes no output."""
    cfg = config.compose("smoke")
    recorded = config.compose("smoke")
    recorded.model.sha256 = "ab" * 32
    assert config.config_hash(recorded) == config.config_hash(cfg)
    frozen = tmp_path / "config.yaml"
    config.freeze(recorded, frozen)
    assert config.load(frozen).model.sha256 == "ab" * 32
    other = config.compose("smoke")
    other.model.sha256 = "cd" * 32
    with pytest.raises(RlverInputError, match="model.sha256"):
        config.freeze(other, frozen)
