"""The run report on a synthetic run directory: contents, escaping, partial runs, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rlver import config as rconfig
from rlver.errors import RlverInputError
from rlver.io import write_json, write_text
from rlver.metrics import paired_gain
from rlver.reporting.report import build_report
from rlver.schema import write_trajectories

RUN = "report-test-run"
FIGURES = ("learning_curve.png", "outcomes.png", "emotion_trajectories.png",
           "training_health.png")


def _row(iteration: int, dialogue: int, emotions: list[int], outcome: str) -> dict[str, Any]:
    """One consistent trajectory row: user opens, then assistant/user alternate."""
    start = 40
    deltas = [e - p for p, e in zip([start, *emotions[:-1]], emotions, strict=True)]
    messages = [{"role": "user", "content": f"opening {dialogue}: <script>alert(1)</script>"}]
    for k in range(len(emotions)):
        messages.append({"role": "assistant", "content": f"reply {k} of dialogue {dialogue}"})
        messages.append({"role": "user", "content": f"reaction {k} & more"})
    n = 6 * len(emotions)
    return {
        "iteration": iteration,
        "shard": 0,
        "dialogue": dialogue,
        "sample": 0,
        "persona_id": f"p{dialogue:03d}",
        "group_id": f"g{dialogue}",
        "seed": 1000 + dialogue,
        "messages": messages,
        "input_ids": list(range(n)),
        "loss_mask": [k % 2 for k in range(n)],
        "logprobs": [-0.5 * (k % 2) for k in range(n)],
        "emotion_start": start,
        "emotion": emotions,
        "delta": deltas,
        "reason": [f"reason <{k}>" for k in range(len(emotions))],
        "parse_error": [False] * len(emotions),
        "truncated": [False] * len(emotions),
        "num_turns": len(emotions),
        "outcome": outcome,
        "final_emotion": emotions[-1],
        "reward": max(emotions[-1], 0) / 100.0,
        "seconds": 0.1,
    }


def _dialogues(iteration: int) -> list[dict[str, Any]]:
    return [
        _row(iteration, 0, [50, 60, 90], "success"),
        _row(iteration, 1, [30, 20, 5], "failure"),
        _row(iteration, 2, [45, 50], "goodbye"),
        _row(iteration, 3, [40, 42, 44, 46], "max_turns"),
    ]


def _make_run(root: Path, *, iterations: int = 2, evals: int = 3) -> Path:
    cfg = rconfig.compose("smoke", run=RUN)
    run_dir = root / RUN
    write_text(run_dir / "config.yaml", rconfig.to_yaml(cfg))
    h = rconfig.config_hash(cfg)
    for i in range(iterations):
        d = run_dir / f"iter_{i:04d}"
        rows = _dialogues(i)
        for s in range(2):
            write_trajectories(
                d / "rollouts" / f"shard_{s}.parquet",
                rows[s * 2 : s * 2 + 2],
                config_hash=h,
                policy_sha256="ab" * 32,
                kind="rollout",
            )
        write_json(
            d / "update" / "metrics.json",
            {
                "iteration": i,
                "loss": 0.1 / (i + 1),
                "reward_mean": 0.4 + 0.01 * i,
                "reward_std": 0.2,
                "num_samples": 4,
                "num_tokens": 100,
                "grad_norm": 1.5,
                "lr": 2e-6,
                "optimizer_steps": 1,
                "seconds": 1.0,
                "tokens_per_s": 100.0,
                "reply_length_mean": 20.0 + i,
                "reply_length_max": 64.0,
                "truncated_share": 0.25 * i,
                "zero_spread_groups": 0.5,
            },
        )
    for i in range(evals):
        d = run_dir / f"iter_{i:04d}" / "eval"
        rows = _dialogues(i)
        write_trajectories(
            d / "dialogues.parquet", rows, config_hash=h, policy_sha256="cd" * 32, kind="eval"
        )
        write_json(
            d / "metrics.json",
            {
                "iteration": i,
                "n": 4,
                "score": 40.0 + i,
                "success": 1,
                "failure": 1,
                "success_rate": 0.25,
                "failure_rate": 0.25,
                "mean_turns": 3.0,
                "outcomes": {"success": 1, "failure": 1, "goodbye": 1, "max_turns": 1, "error": 0},
                "policy_sha256": "cd" * 32,
            },
        )
    return run_dir


def _check_pngs(out: Path) -> None:
    for name in FIGURES:
        assert (out / name).read_bytes().startswith(b"\x89PNG"), name


def test_full_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = _make_run(tmp_path)
    out = tmp_path / "report"
    index = build_report(run_dir, out)
    assert index == out / "index.html"
    page = index.read_text(encoding="utf-8")
    assert RUN in page
    assert "experiment smoke" in page
    for label in ("best", "median", "worst"):
        assert f"<h3>{label}: dialogue" in page
    assert page.count('<div class="dialogue">') == 3
    # Example dialogues come from the last evaluated iteration (2, the final policy).
    assert "eval of iteration 2" in page
    # Escaped everywhere: messages and reasons.
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "reason &lt;0&gt;" in page
    # The health of each update: reply length, replies cut, zero-spread groups.
    assert "<h2>Training health</h2>" in page
    assert "<td>21.0</td><td>64</td><td>25%</td><td>50%</td>" in page
    assert "reaction 0 &amp; more" in page
    # The simulator's verdict on reply 0 of the best dialogue: 40 -> 50.
    assert "emotion 50 (delta +10)" in page
    # One reward column; a two-step run whose score did not move says what to expect.
    assert "<th>train reward</th>" in page and "update reward" not in page
    assert "after 2 optimizer steps (lr 2e-06), within twice its standard error" in page
    assert "2 optimizer steps are few" in page
    assert "4 of the 4 evaluation dialogues of iteration 2 are word for word" in page
    # The settings that shaped the run, in words; no cut replies, no warning about them.
    assert "<td>scale</td><td>one machine, CPU only: model smollm2-135m-instruct, heuristic " \
           "simulator</td>" in page
    assert "<td>config/experiment/smoke.yaml as written (scale=paper: not shrunk)</td>" in page
    assert "cut at their token cap" not in page
    # The learning curve's gain, measured against its own swing (paired over personas).
    ends = [{r["persona_id"]: r["final_emotion"] for r in _dialogues(i) if r["sample"] == 0}
            for i in (0, 2)]
    gain, se, n = paired_gain(*ends)
    assert f"iteration 0 to 2: {gain:+.1f} points" in page
    assert f"same {n} benchmark personas; paired standard error {se:.1f}" in page
    _check_pngs(out)
    assert "report: wrote" in capsys.readouterr().err
    # Deterministic: a rebuild gives identical files.
    first = {n: (out / n).read_bytes() for n in (*FIGURES, "index.html")}
    build_report(run_dir, out)
    assert {n: (out / n).read_bytes() for n in first} == first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report.tmp")]


def test_paired_gain_is_the_mean_change_and_its_standard_error() -> None:
    gain, se, n = paired_gain({"a": 10, "b": 20, "c": 30, "gone": 0},
                              {"a": 14, "b": 22, "c": 36, "new": 99})
    assert (gain, n) == (4.0, 3)  # changes 4, 2, 6 over the personas scored twice
    assert se == pytest.approx(2.0 / 3 ** 0.5)  # sd 2 over sqrt(3)
    with pytest.raises(ValueError, match="2 personas"):
        paired_gain({"a": 1}, {"a": 2})


def test_report_without_eval_or_update(tmp_path: Path) -> None:
    run_dir = _make_run(tmp_path, iterations=1, evals=0)
    (run_dir / "iter_0000" / "update" / "metrics.json").unlink()
    index = build_report(run_dir, tmp_path / "report")
    page = index.read_text(encoding="utf-8")
    assert RUN in page
    assert "No evaluation yet." in page
    _check_pngs(tmp_path / "report")


def test_report_of_a_fresh_run(tmp_path: Path) -> None:
    run_dir = _make_run(tmp_path, iterations=0, evals=0)
    index = build_report(run_dir, tmp_path / "report")
    assert "No iterations yet." in index.read_text(encoding="utf-8")
    _check_pngs(tmp_path / "report")


def test_missing_config(tmp_path: Path) -> None:
    with pytest.raises(RlverInputError, match=r"config\.yaml.*Fix:"):
        build_report(tmp_path, tmp_path / "report")
    assert not (tmp_path / "report").exists()


def test_reply_without_user_reaction_keeps_its_verdict() -> None:
    from rlver.reporting.page import _dialogue

    row = _row(0, 7, [55, 35], "max_turns")
    row["messages"] = row["messages"][:-1]  # ended on the assistant's last reply
    out = _dialogue("worst", row)
    assert out.index("reply 1 of dialogue 7") < out.index("emotion 35 (delta -20)")


def test_digest_names_what_differs_between_two_runs(tmp_path: Path) -> None:
    from rlver.digest import differences, digest

    a, b = _make_run(tmp_path / "a"), _make_run(tmp_path / "b")
    da = digest(a)
    assert "iter_0001/rollouts/shard_0.parquet" in da and "iter_0002/eval/metrics.json" in da
    assert "seconds" not in da["iter_0000/rollouts/shard_0.parquet"]
    assert differences(da, digest(b)) == []
    rows = _dialogues(1)[2:]
    rows[0]["reward"] = 0.99
    write_trajectories(b / "iter_0001/rollouts/shard_1.parquet", rows,
                       config_hash="x", policy_sha256="ab" * 32, kind="rollout")
    assert differences(da, digest(b)) == ["iter_0001/rollouts/shard_1.parquet: differs in reward"]
