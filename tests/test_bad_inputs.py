"""The bad-input tables: each row a bad input through an `rlver` command (or `snakemake
--config`); each must end with exit status 2 and one message naming the input, what is
wrong and the fix, with no traceback and nothing written at the output path. `CASES` run
in this process (`rlver.cli.main`); `TYPED` run the real command as a user types it, at
least three for every subcommand.

The bad files are made from good ones: a frozen tiny config, its persona sets and the
embedded model's policy (docs/faults.md, "Bad inputs").
"""

from __future__ import annotations

import json
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
    """A copy of the policy `base` with its weights (b"": none) and/or config.json
    replaced."""
    dst.mkdir()
    for f in base.iterdir():
        if f.name in ("model.safetensors", "weights.sha256") and weights == b"":
            continue
        if f.name == "model.safetensors" and weights is not None:
            (dst / f.name).write_bytes(weights)
        elif f.name == "config.json" and config is not None:
            (dst / f.name).write_text(config)
        else:
            os.symlink(f.resolve(), dst / f.name)
    return dst


#: The original work's profiles, the second without its `task` field.
_PROFILES = [{"id": "a", "player": "* 姓名：王\n", "scene": "s", "main_cha": "负面型",
              "cha_group": ["愤怒"], "task": "你希望对方用心倾听你的情绪宣泄", "first_talk": "hi"},
             {"id": "b", "player": "* 姓名：王\n", "scene": "s", "main_cha": "负面型",
              "cha_group": ["愤怒"], "first_talk": "hi"}]


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
    frozen = (root / "config.yaml").read_bytes()

    def run(name: str, files: dict[str, bytes]) -> Path:
        """A run folder: the frozen config and `files` (relative path -> bytes)."""
        for rel, data in {"config.yaml": frozen, **files}.items():
            (root / name / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / name / rel).write_bytes(data)
        return root / name

    # The block's first policy, where the frozen config's run folder (root) keeps it.
    link_tree(base_model, root / "iter_0000" / "policy")
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
        "policy_no_weights": _damaged_policy(base_model, root / "pol_none", b"", None),
        "not_utf8_yaml": write("latin1.yaml", frozen + "# café\n".encode("latin-1")),
        "not_utf8_jsonl": write("latin1.jsonl", '{"id": "a", "history": "café"}\n'.encode(
            "latin-1")),
        "list_jsonl": write("list.jsonl", b"[1, 2]\n"),
        "profiles": write("profiles.jsonl", "\n".join(
            json.dumps(r, ensure_ascii=False) for r in _PROFILES).encode() + b"\n"),
        "shard_zeros": write("zeros.parquet", b"PAR1" + b"\0" * 100),
        "run_good": run("run_good", {}),
        "run_not_utf8": run("run_not_utf8", {"config.yaml": frozen + b"# caf\xe9\n"}),
        "run_damaged_metrics": run("run_damaged_metrics", {
            "iter_0000/update/metrics.json": b"caf\xe9", "iter_0000/eval/metrics.json": good}),
        "run_truncated_shard": run("run_truncated_shard", {
            "iter_0000/rollouts/shard_000.parquet": good[:100]}),
    }
    bad["policy_empty"].mkdir()
    bad |= _retention_configs(root)
    bad |= {"adapter_no_base": _adapter(root / "adapter_no_base", "../nowhere"),
            "adapter_other_base": _adapter(root / "adapter_other_base", "../policy")}
    return World(root, root / "config.yaml", personas, root / "policy", bad)


def _retention_configs(root: Path) -> dict[str, Path]:
    """Frozen configs the retention stage refuses: its data file deleted after the run
    was frozen, and a task lm-eval does not have."""
    from rlver import config
    from rlver.retention_tasks import data_path

    def frozen(name: str, *overrides: str) -> Path:
        path = root / name / "config.yaml"
        config.freeze(config.compose("smoke", [*TINY, *overrides], run="tiny"), path)
        return path

    data = root / "ifeval.jsonl"
    shutil.copyfile(data_path("package:ifeval_rlver.jsonl"), data)
    gone = frozen("ret_gone", "retention=cpu", f"retention.tasks.ifeval.data={data}")
    data.unlink()
    unknown = frozen("ret_task", "retention=cpu")  # then its task renamed by hand
    unknown.write_text(unknown.read_text().replace("    ifeval:\n", "    no_such_task:\n"))
    return {"retention_data_gone": gone, "retention_data_file": data,
            "retention_cpu": frozen("ret_cpu", "retention=cpu"),
            "retention_unknown_task": unknown}


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


def retention(config: str | None = None, policy: str | None = None) -> Build:
    def build(w: World) -> tuple[list[str], Path]:
        out = w.out / "retention"
        return ["retention", "--config", str(w.bad[config] if config else w.config),
                "--iteration", "0", "--policy", str(w.bad[policy] if policy else w.policy),
                "--out-dir", str(out)], out

    return build


def command(*args: str) -> Build:
    """Any command; `{name}` in an argument is the bad file `name`, `{out}` the output,
    `{config}`, `{policy}`, `{personas}`, `{test_personas}` the good inputs."""
    def build(w: World) -> tuple[list[str], Path]:
        out = w.out / "result"
        subs = {k: str(v) for k, v in w.bad.items()} | {
            "out": str(out), "root": str(w.root), "personas": str(w.personas),
            "config": str(w.config), "policy": str(w.policy),
            "test_personas": str(w.root / "test.parquet")}

        def fill(arg: str) -> str:
            for key, value in subs.items():
                arg = arg.replace("{" + key + "}", value)
            return arg

        return [fill(a) for a in args], out

    return build


def budget(*overrides: str, experiment: str = "paper_grpo_think_vanilla") -> Build:
    """`rlver budget`; `{name}` inside an override is the bad file `name`."""
    def build(w: World) -> tuple[list[str], Path]:
        subs = [o.format(**{k: str(v) for k, v in w.bad.items()}) for o in overrides]
        return ["budget", "--experiment", experiment, *subs], w.out / "result"

    return build


FIX = "Fix"

#: id -> (case, substrings the message must hold; "{name}" is the bad file's path).
CASES: dict[str, tuple[Build, tuple[str, ...]]] = {
    # config: experiment, keys, types, ranges, combinations, override syntax
    "unknown-experiment": (compose(experiment="nope"), ("'nope'", "unknown experiment", FIX)),
    "experiment-absolute-path": (compose(experiment="/etc/passwd"), ("'/etc/passwd'", FIX)),
    "unknown-key": (compose("rollout.nokey=1"), ("unknown key 'rollout.nokey'", FIX)),
    "unknown-top-key": (compose("nokey=1"), ("unknown key 'nokey'", FIX)),
    "wrong-type-int": (compose("rollout.shards=abc"), ("rollout.shards", "'abc'", "Integer")),
    "wrong-type-float": (compose("algorithm.lr=fast"), ("algorithm.lr", "'fast'", "Float")),
    "wrong-type-bool": (compose("rollout.sessions=maybe"), ("rollout.sessions", "'maybe'")),
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
    # budget: what it cannot price
    "budget-cpu-run": (budget(experiment="smoke"), ("cluster.gpus_per_node is 0", FIX)),
    "budget-unknown-experiment": (budget(experiment="nope"),
                                  ("'nope'", "unknown experiment", FIX)),
    "budget-unknown-model": (budget("model.name=mystery-9b"),
                             ("model.source", "'mystery-9b'", "models.yaml", FIX)),
    "budget-damaged-weights": (budget("model.source={policy_truncated}",
                                      # within the stub's 8192 positions: the weights speak
                                      "rollout.max_model_len=8192", "simulator.max_turns=4",
                                      "evaluation.max_turns=4"),
                               ("model.safetensors", "truncated", FIX)),
    "budget-zero-nodes": (budget("cluster.nodes=0"), ("cluster.nodes must be at least 1", FIX)),
    "budget-wrong-type": (budget("iterations=many"), ("iterations", "'many'", FIX)),
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
                            ("personas.source", "generated, rlver, llm", FIX)),
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
    # the retention stage: its config keys, its data, its tasks, its policy
    "retention-every-not-kept": (compose("retention=cpu", "evaluation.every=2",
                                         "retention.every=3"),
                                 ("retention.every must be 0 or a multiple of "
                                  "evaluation.every (2)", FIX)),
    "retention-limit-0": (compose("retention=cpu", "retention.tasks.ifeval.limit=0"),
                          ("retention.tasks.ifeval.limit", FIX)),
    "retention-data-missing": (compose("retention=cpu",
                                       "retention.tasks.ifeval.data=/no/such/ifeval.jsonl"),
                               ("retention.tasks.ifeval.data: /no/such/ifeval.jsonl not found",
                                FIX)),
    "retention-data-not-a-table": (compose("retention=cpu",
                                           "retention.tasks.ifeval.data=/etc/hostname"),
                                   ("retention.tasks.ifeval.data must be a file ending in",
                                    FIX)),
    "retention-paper-data-unset": (compose(
        "model.source=/tmp", "simulator.serve.model_path=/models/simulator",
        experiment="paper_ppo_think_vanilla"),
        ("not set: retention.tasks.ifeval.data, retention.tasks.hendrycks_math500.data", FIX)),
    "retention-no-tasks": (retention(), ("field retention.tasks is empty", FIX)),
    "retention-data-gone": (retention(config="retention_data_gone"),
                            ("{retention_data_gone}", "field retention.tasks.ifeval.data",
                             "{retention_data_file}", "not found", FIX)),
    "retention-unknown-task": (retention(config="retention_unknown_task"),
                               ("'no_such_task' is not a task of lm-eval", FIX)),
    "retention-policy-truncated": (retention(config="retention_cpu", policy="policy_truncated"),
                                   ("model.safetensors", "truncated", FIX)),
    "retention-config-missing": (retention(config="missing"), ("{missing}", "not found", FIX)),
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


def profiles_spec(name: str) -> str:
    """`--spec` of the personas group importing the original work's profiles from the bad
    file `name`."""
    path = "{" + name + "}"
    return json.dumps({"source": "rlver", "train_path": path, "test_path": path})


#: Each subcommand as a user types it, with bad input: id "<subcommand>:<what>" -> (case,
#: substrings the message must hold; "{name}" is the bad file's path).
TYPED: dict[str, tuple[Build, tuple[str, ...]]] = {
    "compose:frozen-config-not-utf8": (command("compose", "--run", "tiny", "--out",
                                               "{not_utf8_yaml}"), ("{not_utf8_yaml}", FIX)),
    "compose:out-under-a-file": (command("compose", "--out", "{binary}/config.yaml"),
                                 ("{binary}", "(--out)", FIX)),
    "compose:experiment-with-dotdot": (compose(experiment="../smoke"),
                                       ("unknown experiment '../smoke'", FIX)),
    "compose:negative-shards": (compose("rollout.shards=-1"),
                                ("rollout.shards must be at least 1", FIX)),
    "prepare-model:missing": (command("prepare-model", "--source", "{missing}", "--out",
                                      "{out}"), ("{missing}", "model.source", FIX)),
    "prepare-model:no-weights": (command("prepare-model", "--source", "{policy_no_weights}",
                                         "--out", "{out}"),
                                 ("{policy_no_weights}", "no weight files", FIX)),
    "prepare-model:a-file": (command("prepare-model", "--source", "{binary}", "--out", "{out}"),
                             ("{binary}", FIX)),
    "prepare-model:unknown-package": (command("prepare-model", "--source", "package:nope",
                                              "--out", "{out}"), ("'nope'", FIX)),
    "init-policy:missing": (command("init-policy", "--model", "{missing}", "--out", "{out}"),
                            ("{missing}", "config.json", FIX)),
    "init-policy:no-weights": (command("init-policy", "--model", "{policy_no_weights}",
                                       "--out", "{out}"),
                               ("{policy_no_weights}", "no weight files", FIX)),
    "init-policy:truncated-weights": (command("init-policy", "--model", "{policy_truncated}",
                                              "--out", "{out}"),
                                      ("model.safetensors", "truncated", FIX)),
    "personas:profiles-not-utf8": (command("personas", "--spec", profiles_spec("not_utf8_jsonl"),
                                           "--train", "{out}", "--test", "{out}"),
                                   ("{not_utf8_jsonl}", "line 1", "UTF-8", FIX)),
    "personas:profile-without-task": (command("personas", "--spec", profiles_spec("profiles"),
                                              "--train", "{out}", "--test", "{out}"),
                                      ("{profiles}", "line 2", "'task'", FIX)),
    "personas:negative-count": (command("personas", "--spec", '{"num_train": -1}', "--train",
                                        "{out}", "--test", "{out}"),
                                ("--spec", "personas.num_train", FIX)),
    "rollout:shard-out-of-range": (command("rollout", "--config", "{config}", "--iteration",
                                           "0", "--shard", "7", "--policy", "{policy}",
                                           "--personas", "{personas}", "--out", "{out}"),
                                   ("--shard 7", "rollout.shards", FIX)),
    "rollout:iteration-out-of-range": (command("rollout", "--config", "{config}",
                                               "--iteration", "-1", "--shard", "0", "--policy",
                                               "{policy}", "--personas", "{personas}",
                                               "--out", "{out}"), ("--iteration -1", FIX)),
    "rollout:config-not-utf8": (rollout(config="not_utf8_yaml"), ("{not_utf8_yaml}", FIX)),
    "rollout:policy-without-weights": (rollout(policy="policy_no_weights"),
                                       ("{policy_no_weights}", "no weight files", FIX)),
    "rollout:policy-missing": (rollout(policy="policy_missing"),
                               ("{policy_missing}", "config.json", FIX)),
    "update:iteration-out-of-range": (command("update", "--config", "{config}", "--iteration",
                                              "2", "--policy", "{policy}", "--rollouts",
                                              "{truncated}", "--out-policy", "{out}",
                                              "--update-dir", "{out}"),
                                      ("--iteration 2", FIX)),
    "update:rollouts-zeros": (update("shard_zeros"), ("{shard_zeros}", "truncated", FIX)),
    "update:policy-without-weights": (update("truncated", policy="policy_no_weights"),
                                      ("{policy_no_weights}", "no weight files", FIX)),
    "block:not-a-block": (command("block", "--config", "{config}", "--first", "1", "--last",
                                  "9", "--personas", "{personas}", "--test-personas",
                                  "{test_personas}"), ("--first 1 --last 9", FIX)),
    "block:config-not-utf8": (command("block", "--config", "{not_utf8_yaml}", "--first", "0",
                                      "--last", "1", "--personas", "{personas}",
                                      "--test-personas", "{test_personas}"),
                              ("{not_utf8_yaml}", FIX)),
    "block:personas-missing": (command("block", "--config", "{config}", "--first", "0",
                                       "--last", "1", "--personas", "{missing}",
                                       "--test-personas", "{test_personas}"),
                               ("{missing}", FIX)),
    "evaluate:iteration-out-of-range": (command("evaluate", "--config", "{config}",
                                                "--iteration", "3", "--policy", "{policy}",
                                                "--personas", "{personas}", "--out-dir",
                                                "{out}"), ("--iteration 3", FIX)),
    "evaluate:personas-not-utf8": (evaluate(personas="not_utf8_yaml"),
                                   ("{not_utf8_yaml}", "Parquet", FIX)),
    "evaluate:policy-without-weights": (evaluate(policy="policy_no_weights"),
                                        ("{policy_no_weights}", "no weight files", FIX)),
    "report:config-not-utf8": (command("report", "--run-dir", "{run_not_utf8}", "--out",
                                       "{out}"), ("{run_not_utf8}/config.yaml", FIX)),
    "report:metrics-not-utf8": (command("report", "--run-dir", "{run_damaged_metrics}",
                                        "--out", "{out}"), ("metrics.json", FIX)),
    "report:truncated-shard": (command("report", "--run-dir", "{run_truncated_shard}",
                                       "--out", "{out}"), ("shard_000.parquet", FIX)),
    "table:missing": (command("table", "{missing}", "--out", "{out}"), ("{missing}", FIX)),
    "table:config-not-utf8": (command("table", "{run_not_utf8}", "--out", "{out}"),
                              ("{run_not_utf8}/config.yaml", FIX)),
    "table:binary-metrics": (command("table", "{run_damaged_metrics}", "--out", "{out}"),
                             ("eval/metrics.json", FIX)),
    "results-doc:missing": (command("results-doc", "{missing}", "--out", "{out}"),
                            ("{missing}", FIX)),
    "results-doc:config-not-utf8": (command("results-doc", "{run_not_utf8}", "--out",
                                            "{out}"), ("{run_not_utf8}/config.yaml", FIX)),
    "results-doc:binary-metrics": (command("results-doc", "{run_damaged_metrics}", "--out",
                                           "{out}"), ("eval/metrics.json", FIX)),
    "score:log-not-utf8": (command("score", "{not_utf8_jsonl}"),
                           ("{not_utf8_jsonl}", "line 1", "UTF-8", FIX)),
    "score:empty": (command("score", "{empty}"), ("{empty}", FIX)),
    "score:not-an-object": (command("score", "{list_jsonl}"), ("{list_jsonl}", "line 1", FIX)),
    "score:truncated-parquet": (command("score", "{truncated}"), ("{truncated}", FIX)),
    "digest:missing": (command("digest", "{missing}"), ("{missing}", FIX)),
    "digest:compare-not-utf8": (command("digest", "{run_good}", "--compare",
                                        "{not_utf8_yaml}"), ("{not_utf8_yaml}", FIX)),
    "digest:truncated-shard": (command("digest", "{run_truncated_shard}"),
                               ("shard_000.parquet", FIX)),
    "status:missing": (command("status", "{missing}"), ("{missing}", FIX)),
    "status:config-not-utf8": (command("status", "{run_not_utf8}"),
                               ("{run_not_utf8}/config.yaml", FIX)),
    "status:metrics-not-utf8": (command("status", "{run_damaged_metrics}"),
                                ("update/metrics.json", FIX)),
    "calibrate:log-not-utf8": (command("calibrate", "--logs", "{not_utf8_jsonl}", "--out",
                                       "{out}"), ("{not_utf8_jsonl}", "UTF-8", FIX)),
    "calibrate:unknown-simulator": (command("calibrate", "--logs", "{profiles}", "--simulator",
                                            "nope", "--out", "{out}"),
                                    ("simulator.backend", FIX)),
    "calibrate:unknown-key": (command("calibrate", "--logs", "{profiles}", "--set", "nokey=1",
                                      "--out", "{out}"), ("simulator.nokey", FIX)),
    "calibrate:limit-zero": (command("calibrate", "--logs", "{profiles}", "--limit", "0",
                                       "--out", "{out}"), ("--limit", FIX)),
    **{f"{name.split('-')[0]}:{name.split('-', 1)[1]}": CASES[name] for name in (
        "budget-unknown-experiment", "budget-zero-nodes", "budget-wrong-type",
        "retention-no-tasks", "retention-data-gone", "retention-config-missing",
        "export-without-merge", "export-full-policy", "export-adapter-other-base")},
    "serve-simulator:config-missing": (command("serve-simulator", "--config", "{missing}"),
                                       ("{missing}", "not found", FIX)),
    "serve-simulator:config-not-utf8": (command("serve-simulator", "--config",
                                                "{not_utf8_yaml}"), ("{not_utf8_yaml}", FIX)),
    "serve-simulator:not-served": (command("serve-simulator", "--config", "{config}"),
                                   ("simulator.backend is 'heuristic'", "not 'served'", FIX)),
}


@pytest.mark.parametrize("name", TYPED)
def test_every_command_refuses_bad_input_in_one_line(name: str, world: World) -> None:
    """The real command: exit status 2, one line on stderr naming the input and the fix,
    no traceback, nothing written."""
    build, wanted = TYPED[name]
    argv, out = build(world)
    shutil.rmtree(world.out, ignore_errors=True)
    env = os.environ | {"PATH": f"{BIN}:{os.environ['PATH']}"}
    res = subprocess.run([str(BIN / "rlver"), *argv], capture_output=True, text=True, env=env,
                         timeout=300)
    lines = res.stderr.splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert lines[0].startswith(f"rlver {argv[0]}: error: "), lines[0]
    for want in wanted:
        for key, path in world.bad.items():
            want = want.replace("{" + key + "}", str(path))
        assert want in lines[0], f"{want!r} not in: {lines[0]}"
    assert "Traceback" not in res.stdout + res.stderr
    written = [p for p in world.out.rglob("*") if p.is_file()] if world.out.exists() else []
    assert not out.exists() and not written, f"{argv[0]} wrote {out} {written}"


def test_every_subcommand_has_three_typed_bad_inputs() -> None:
    import argparse

    from rlver.cli import build_parser

    commands = next(a.choices for a in build_parser()._actions
                    if isinstance(a, argparse._SubParsersAction))
    typed = [name.split(":")[0] for name in TYPED]
    assert {c: typed.count(c) for c in commands if typed.count(c) < 3} == {}
    assert set(typed) <= set(commands)


def _message(arguments: dict[str, list[str]], fn: Callable[..., object], *args: object
             ) -> str | None:
    """The command line's message for the error fn(*args) raises."""
    from rlver.errors import user_message

    try:
        fn(*args)
    except Exception as exc:
        return user_message(exc, arguments)
    raise AssertionError(f"{fn} raised nothing")


def test_the_boundary_names_the_file_an_undecodable_read_came_from(tmp_path: Path) -> None:
    """What no reader checks itself still ends in one line naming the file and the
    argument it came in: a decoding error, found in the traceback's frames; without a
    file there, the command's arguments. Anything else is a bug: no message."""
    log = tmp_path / "logs" / "a.log"
    log.parent.mkdir()
    log.write_bytes(b"caf\xe9\n")
    arguments = {"--logs": [str(log.parent)], "--out": ["x"]}
    message = _message(arguments, lambda path: path.read_text(encoding="utf-8"), log)
    assert message is not None and message.startswith(f"{log} (--logs): not UTF-8 text")
    assert "Fix:" in message and "\n" not in message
    assert str(_message(arguments, json.loads, "{")).startswith(
        "an input (--logs, --out): not valid JSON")
    assert _message(arguments, int, "a bug") is None
    missing = tmp_path / "x" / "y"
    assert _message({"--out": [str(tmp_path / "x")]}, missing.read_text) == (
        f"{missing} (--out): No such file or directory. Fix: check the path (a file of the "
        "workflow: rerun the stage that writes it).")


@pytest.mark.parametrize("args, wanted", [
    (["snakemake", "--config", "experiment=nope"], "unknown experiment 'nope'"),
    (["snakemake", "--config", "overrides=algorithm.zero_stage=5"], "algorithm.zero_stage"),
    (["snakemake", "--config", "run=../x"], "run must be a name without '/'"),
    (["snakemake", "--config", "overrides=rollout.shards=[1"], "rollout.shards=[1"),
], ids=["snakemake-unknown-experiment", "snakemake-zero-stage-5", "snakemake-run-dotdot",
        "snakemake-broken-override"])
def test_no_traceback_reaches_the_terminal(args: list[str], wanted: str, tmp_path: Path
                                           ) -> None:
    """The workflow, as a user starts it: the message, and no Python traceback."""
    args = [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "--directory",
            str(tmp_path), "-n", *args[1:]]
    env = os.environ | {"PATH": f"{BIN}:{os.environ['PATH']}"}
    res = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    text = res.stdout + res.stderr
    assert res.returncode != 0 and wanted in text and "Fix" in text, text
    assert "Traceback" not in text
    assert not (tmp_path / "results").exists()
