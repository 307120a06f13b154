"""The bad-input table: each row a bad input through an `rlver` command (or `snakemake
--config`); each must end with exit status 2 and one message naming the input, what is
wrong and the fix, with no traceback and nothing written at the output path.

The bad files are made from good ones: a frozen tiny config, its persona sets and the
embedded model's policy (docs/faults.md, "Bad inputs").
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from .helpers import BIN, ROOT, TINY


@dataclass(frozen=True)
class World:
    """Good inputs and the bad files made from them, in one folder per module."""

    root: Path
    config: Path
    personas: Path
    policy: Path
    bad: dict[str, Path]

    @property
    def out(self) -> Path:
        return self.root / "out"


def _damaged_policy(base: Path, dst: Path, weights: bytes | None, config: str | None) -> Path:
    """A copy of the policy `base` with its weights and/or config.json replaced."""
    dst.mkdir()
    for f in base.iterdir():
        if f.name == "model.safetensors" and weights is not None:
            (dst / f.name).write_bytes(weights)
        elif f.name == "config.json" and config is not None:
            (dst / f.name).write_text(config)
        else:
            os.symlink(f.resolve(), dst / f.name)
    return dst


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, base_model: Path) -> World:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rlver import config
    from rlver.models import link_tree
    from rlver.personas import build_persona_sets

    root = tmp_path_factory.mktemp("bad")
    cfg = config.compose("smoke", TINY, run="tiny")
    config.freeze(cfg, root / "config.yaml")
    personas = root / "train.parquet"
    build_persona_sets(cfg.personas, personas, root / "test.parquet")
    link_tree(base_model, root / "policy")
    good = personas.read_bytes()
    with (base_model / "model.safetensors").open("rb") as f:
        head = f.read(1 << 20)

    def write(name: str, data: bytes) -> Path:
        (root / name).write_bytes(data)
        return root / name

    foreign = root / "foreign.parquet"
    pq.write_table(pa.table({"a": [1, 2]}), foreign)
    bad = {
        "missing": root / "missing.parquet",
        "empty": write("empty.parquet", b""),
        "truncated": write("truncated.parquet", good[: len(good) // 2]),
        "binary": write("binary.parquet", bytes(range(256)) * 16),
        "json": write("foreign.json", b'{"a": 1}\n'),
        "foreign": foreign,
        "truncated_jsonl": write("log.jsonl", b'{"id": "a", "history": [1, 2'),
        "broken_yaml": write("broken.yaml", b"run: tiny\nrollout: {shards: [1\n"),
        "policy_truncated": _damaged_policy(base_model, root / "pol_trunc", head, None),
        "policy_binary": _damaged_policy(base_model, root / "pol_bin", bytes(range(256)) * 64,
                                         None),
        "policy_config": _damaged_policy(base_model, root / "pol_cfg", None, '{"oops'),
        "policy_empty": root / "pol_empty",
        "policy_missing": root / "pol_missing",
    }
    bad["policy_empty"].mkdir()
    bad |= {"adapter_no_base": _adapter(root / "adapter_no_base", "../nowhere"),
            "adapter_other_base": _adapter(root / "adapter_other_base", "../policy")}
    return World(root, root / "config.yaml", personas, root / "policy", bad)


def _adapter(dst: Path, base: str) -> Path:
    """A LoRA adapter folder whose base.json names `base` (relative) with a digest no
    base has: missing, or another base than the one it was trained on."""
    import json

    dst.mkdir()
    (dst / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}\n')
    (dst / "base.json").write_text(json.dumps({"path": base, "sha256": "0" * 64}) + "\n")
    return dst


#: A case: (argv, output path) from the world.
Build = Callable[[World], tuple[list[str], Path]]


def compose(*overrides: str, experiment: str = "smoke", run: str | None = None) -> Build:
    def build(w: World) -> tuple[list[str], Path]:
        out = w.out / "config.yaml"
        run_args = [] if run is None else ["--run", run]
        return ["compose", "--experiment", experiment, *run_args, "--out", str(out),
                *overrides], out

    return build


def rollout(personas: str | None = None, policy: str | None = None,
            config: str | None = None) -> Build:
    def build(w: World) -> tuple[list[str], Path]:
        out = w.out / "shard_000.parquet"
        return ["rollout", "--config", str(w.bad[config] if config else w.config),
                "--iteration", "0", "--shard", "0",
                "--policy", str(w.bad[policy] if policy else w.policy),
                "--personas", str(w.bad[personas] if personas else w.personas),
                "--out", str(out)], out

    return build


def update(rollouts: str = "", policy: str | None = None) -> Build:
    def build(w: World) -> tuple[list[str], Path]:
        out = w.out / "policy"
        shard = w.bad[rollouts] if rollouts else w.personas
        return ["update", "--config", str(w.config), "--iteration", "0",
                "--policy", str(w.bad[policy] if policy else w.policy),
                "--rollouts", str(shard), "--out-policy", str(out),
                "--update-dir", str(w.out / "update")], out

    return build


def evaluate(personas: str | None = None, policy: str | None = None) -> Build:
    def build(w: World) -> tuple[list[str], Path]:
        out = w.out / "eval"
        return ["evaluate", "--config", str(w.config), "--iteration", "0",
                "--policy", str(w.bad[policy] if policy else w.policy),
                "--personas", str(w.bad[personas] if personas else w.personas),
                "--out-dir", str(out)], out

    return build


def command(*args: str) -> Build:
    """Any command; `{name}` in an argument is the bad file `name`, `{out}` the output."""
    def build(w: World) -> tuple[list[str], Path]:
        out = w.out / "result"
        subs = {k: str(v) for k, v in w.bad.items()} | {
            "out": str(out), "root": str(w.root), "personas": str(w.personas),
            "policy": str(w.policy)}
        return [subs.get(a[1:-1], a) if a.startswith("{") else a for a in args], out

    return build


FIX = "Fix"

#: id -> (case, substrings the message must hold; "{name}" is the bad file's path).
CASES: dict[str, tuple[Build, tuple[str, ...]]] = {
    # config: experiment, keys, types, ranges, combinations, override syntax
    "unknown-experiment": (compose(experiment="nope"), ("'nope'", "unknown experiment", FIX)),
    "experiment-with-dotdot": (compose(experiment="../smoke"),
                               ("'../smoke'", "unknown experiment", FIX)),
    "experiment-absolute-path": (compose(experiment="/etc/passwd"), ("'/etc/passwd'", FIX)),
    "unknown-key": (compose("rollout.nokey=1"), ("unknown key 'rollout.nokey'", FIX)),
    "unknown-top-key": (compose("nokey=1"), ("unknown key 'nokey'", FIX)),
    "wrong-type-int": (compose("rollout.shards=abc"), ("rollout.shards", "'abc'", "Integer")),
    "wrong-type-float": (compose("algorithm.lr=fast"), ("algorithm.lr", "'fast'", "Float")),
    "wrong-type-bool": (compose("rollout.sessions=maybe"), ("rollout.sessions", "'maybe'")),
    "negative-shards": (compose("rollout.shards=-1"), ("rollout.shards must be at least 1", FIX)),
    "negative-lr": (compose("algorithm.lr=-1e-6"), ("algorithm.lr must be positive", FIX)),
    "zero-critic-lr": (compose("algorithm.critic_lr=0"), ("algorithm.critic_lr", FIX)),
    "zero-iterations": (compose("iterations=0"), ("iterations must be at least 1", FIX)),
    "zero-turns": (compose("simulator.max_turns=0"), ("simulator.max_turns", FIX)),
    "zero-eval-turns": (compose("evaluation.max_turns=0"), ("evaluation.max_turns", FIX)),
    "evaluation-every-0": (compose("evaluation.every=0"), ("evaluation.every", FIX)),
    "zero-stage-5": (compose("algorithm.zero_stage=5"), ("algorithm.zero_stage", "0, 1, 2", FIX)),
    "unknown-precision": (compose("algorithm.precision=fp8"),
                          ("algorithm.precision", "fp32, bf16", FIX)),
    "unknown-dtype": (compose("model.dtype=float7"), ("model.dtype", "bfloat16", FIX)),
    "gamma-above-1": (compose("algorithm.gamma=1.5"), ("algorithm.gamma", "[0, 1]", FIX)),
    "unknown-engine": (compose("rollout.engine=tpu"), ("rollout.engine", "hf, vllm", FIX)),
    "grpo-group-of-one": (compose("rollout.samples_per_persona=1"),
                          ("rollout.samples_per_persona", "advantage", FIX)),
    "broken-override-list": (compose("rollout.shards=[1"), ("rollout.shards=[1", FIX)),
    "broken-override-dict": (compose("rollout={a: 1"), ("rollout={a: 1", FIX)),
    "run-with-dotdot": (compose(run="../x"), ("run must be a name without '/'", FIX)),
    # a config file where a frozen run config is expected
    "config-missing": (rollout(config="missing"), ("{missing}", "not found", FIX)),
    "config-empty": (rollout(config="empty"), ("{empty}", "missing", FIX)),
    "config-broken-yaml": (rollout(config="broken_yaml"), ("{broken_yaml}", "not a valid", FIX)),
    "config-binary": (rollout(config="binary"), ("{binary}", "not a valid", FIX)),
    "config-foreign": (rollout(config="json"), ("{json}", "'a'", FIX)),
    # personas
    "personas-missing": (rollout(personas="missing"), ("{missing}", "not found", FIX)),
    "personas-empty": (rollout(personas="empty"), ("{empty}", "0 bytes", FIX)),
    "personas-truncated": (rollout(personas="truncated"), ("{truncated}", "Parquet", FIX)),
    "personas-binary": (rollout(personas="binary"), ("{binary}", "Parquet", FIX)),
    "personas-foreign": (rollout(personas="foreign"), ("{foreign}", "persona", FIX)),
    "eval-personas-truncated": (evaluate(personas="truncated"), ("{truncated}", FIX)),
    "spec-broken-json": (command("personas", "--spec", '{"source": "generated"',
                                 "--train", "{out}", "--test", "{out}"), ("--spec", "JSON", FIX)),
    "spec-unknown-source": (command("personas", "--spec", '{"source": "nope"}',
                                    "--train", "{out}", "--test", "{out}"),
                            ("personas.source", "'nope'", FIX)),
    # rollouts
    "rollouts-missing": (update("missing"), ("{missing}", "not found", FIX)),
    "rollouts-empty": (update("empty"), ("{empty}", "0 bytes", FIX)),
    "rollouts-truncated": (update("truncated"), ("{truncated}", "truncated", FIX)),
    "rollouts-binary": (update("binary"), ("{binary}", "Parquet", FIX)),
    "rollouts-foreign": (update(""), ("train.parquet", "not a trajectory file", FIX)),
    # logs
    "score-missing": (command("score", "{missing}"), ("{missing}", "not found", FIX)),
    "score-truncated-jsonl": (command("score", "{truncated_jsonl}"),
                              ("{truncated_jsonl}", "line 1", FIX)),
    "score-binary": (command("score", "{binary}"), ("{binary}", "Parquet", FIX)),
    "score-foreign": (command("score", "{personas}"), ("train.parquet", "schema_version", FIX)),
    "calibrate-missing": (command("calibrate", "--logs", "{missing}", "--out", "{out}"),
                          ("{missing}", "not found", FIX)),
    "calibrate-parquet": (command("calibrate", "--logs", "{foreign}", "--out", "{out}"),
                          ("{foreign}", "SAGE", FIX)),
    "calibrate-truncated": (command("calibrate", "--logs", "{truncated_jsonl}", "--out", "{out}"),
                            ("{truncated_jsonl}", "line 1", FIX)),
    "digest-compare-binary": (command("digest", "{root}", "--compare", "{binary}"),
                              ("{binary}", "JSON", FIX)),
    "report-no-run": (command("report", "--run-dir", "{missing}", "--out", "{out}"),
                      ("{missing}", "not a run directory", FIX)),
    # policies
    "policy-missing": (rollout(policy="policy_missing"), ("{policy_missing}", "config.json", FIX)),
    "policy-empty": (rollout(policy="policy_empty"), ("{policy_empty}", "config.json", FIX)),
    "policy-truncated-weights": (rollout(policy="policy_truncated"),
                                 ("model.safetensors", "truncated", FIX)),
    "policy-binary-weights": (rollout(policy="policy_binary"),
                              ("model.safetensors", "not a safetensors", FIX)),
    "policy-broken-config": (rollout(policy="policy_config"), ("config.json", "JSON", FIX)),
    "update-policy-truncated": (update("", policy="policy_truncated"),
                                ("model.safetensors", "truncated", FIX)),
    "evaluate-policy-truncated": (evaluate(policy="policy_truncated"),
                                  ("model.safetensors", "truncated", FIX)),
    # LoRA: the config, adapters and their base, rlver export
    "lora-zero3": (compose("model/lora=r64", "algorithm.zero_stage=3"),
                   ("algorithm.zero_stage must be at most 2 with model.lora", FIX)),
    "lora-unknown-target": (compose("model/lora=r64", "model.lora.target_modules=[lm_head]"),
                            ("model.lora.target_modules", "q_proj", FIX)),
    "rollout-adapter-without-base": (rollout(policy="adapter_no_base"),
                                     ("base.json", "is not there", FIX)),
    "rollout-adapter-other-base": (rollout(policy="adapter_other_base"),
                                   ("base.json", "trained on a base", FIX)),
    "export-without-merge": (command("export", "--policy", "{adapter_no_base}", "--out",
                                     "{out}"), ("--merge", FIX)),
    "export-full-policy": (command("export", "--merge", "--policy", "{policy}",
                                   "--out", "{out}"), ("not a LoRA adapter", FIX)),
    "export-missing-policy": (command("export", "--merge", "--policy", "{policy_missing}",
                                      "--out", "{out}"), ("{policy_missing}", FIX)),
    "export-adapter-without-base": (command("export", "--merge", "--policy",
                                            "{adapter_no_base}", "--out", "{out}"),
                                    ("{adapter_no_base}", "is not there", FIX)),
    "export-adapter-other-base": (command("export", "--merge", "--policy",
                                          "{adapter_other_base}", "--out", "{out}"),
                                  ("trained on a base whose weights hash to", FIX)),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_refused_with_one_message(name: str, world: World, capsys) -> None:
    from rlver.cli import main

    build, wanted = CASES[name]
    argv, out = build(world)
    if name == "update-policy-truncated":
        argv[argv.index("--rollouts") + 1] = str(_rollout_shard(world))
    shutil.rmtree(world.out, ignore_errors=True)
    code = main(argv)
    err = capsys.readouterr()
    text = err.out + err.err
    assert code == 2, text
    assert text.count("error:") == 1, text
    for want in wanted:
        if want[1:-1] in world.bad:  # "{name}": the bad file's path
            want = str(world.bad[want[1:-1]])
        assert want in text, f"{want!r} not in: {text}"
    assert "Traceback" not in text
    assert not out.exists(), f"{out} written"


def _rollout_shard(w: World) -> Path:
    """A valid, empty trajectory file, as if sampled by the damaged policy: the update
    reaches the policy before any row."""
    path = w.root / "shard_000.parquet"
    if not path.exists():
        from rlver import config
        from rlver.io import weights_sha256
        from rlver.schema import write_trajectories

        write_trajectories(path, [], config_hash=config.config_hash(config.load(w.config)),
                           policy_sha256=weights_sha256(w.bad["policy_truncated"]),
                           kind="rollout")
    return path


def test_a_frozen_run_continued_with_another_config(world: World, capsys) -> None:
    from rlver.cli import main

    before = world.config.read_bytes()
    code = main(["compose", "--experiment", "smoke", "--run", "tiny", "--out",
                 str(world.config), *TINY, "rollout.shards=1"])
    text = capsys.readouterr().err
    assert code == 2
    assert str(world.config) in text and "rollout.shards: frozen 2 -> now 1" in text
    assert "Fix: give the changed config a new run name" in text and "Traceback" not in text
    assert world.config.read_bytes() == before


@pytest.mark.parametrize("args, wanted", [
    (["rlver", "compose", "--experiment", "../smoke"], "unknown experiment '../smoke'"),
    (["rlver", "compose", "rollout.shards=-1"], "rollout.shards must be at least 1"),
    (["snakemake", "--config", "experiment=nope"], "unknown experiment 'nope'"),
    (["snakemake", "--config", "overrides=algorithm.zero_stage=5"], "algorithm.zero_stage"),
    (["snakemake", "--config", "run=../x"], "run must be a name without '/'"),
    (["snakemake", "--config", "overrides=rollout.shards=[1"], "rollout.shards=[1"),
], ids=["rlver-dotdot", "rlver-negative-shards", "snakemake-unknown-experiment",
        "snakemake-zero-stage-5", "snakemake-run-dotdot", "snakemake-broken-override"])
def test_no_traceback_reaches_the_terminal(args: list[str], wanted: str, tmp_path: Path
                                           ) -> None:
    """The real commands, as a user types them: the message, and no Python traceback."""
    if args[0] == "snakemake":
        args = [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "--directory",
                str(tmp_path), "-n", *args[1:]]
    else:
        args = [str(BIN / "rlver"), *args[1:]]
    env = os.environ | {"PATH": f"{BIN}:{os.environ['PATH']}"}
    res = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    text = res.stdout + res.stderr
    assert res.returncode != 0 and wanted in text and "Fix" in text, text
    assert "Traceback" not in text
    if args[0].endswith("rlver"):
        assert res.returncode == 2
    else:
        assert not (tmp_path / "results").exists()
