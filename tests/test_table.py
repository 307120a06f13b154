"""`rlver table` and the report's table section on run directories holding what the
evaluate stage writes (its metrics through the same functions), and the paper's numbers
as transcribed against the paper notes."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest

from rlver import cli
from rlver import config as rconfig
from rlver.io import write_json, write_text
from rlver.metrics import benchmark_metrics
from rlver.reporting import paper_numbers
from rlver.reporting.report import build_report
from rlver.reporting.table import build_table, run_rows, to_markdown

from .helpers import shared

#: Final emotions of the benchmark dialogues, per evaluated iteration.
FINALS = {
    0: [100, 5, 40, 68],  # 53.25 -> 53.3; success 25%, failure 25%
    1: [100, 100, 9, 56],  # 66.25 -> 66.3; 50%, 25%
    2: [100, 100, 100, 70],  # 92.5; 75%, 0%
}


def _make_run(root: Path, experiment: str, finals: dict[int, list[int]] | None = None
              ) -> Path:
    """A frozen cpu-scale config and eval/metrics.json as `evaluate_policy` writes them."""
    cfg = rconfig.compose(experiment, ["scale=cpu"])
    run_dir = root / "results" / cfg.run
    write_text(run_dir / "config.yaml", rconfig.to_yaml(cfg))
    for i, emotions in (FINALS if finals is None else finals).items():
        outcomes = ["success" if e >= 100 else "failure" if e < 10 else "max_turns"
                    for e in emotions]
        metrics = {"iteration": i, "policy_sha256": "ab" * 32} | benchmark_metrics(
            emotions, outcomes, [4] * len(emotions), failure_below=cfg.evaluation.failure_below)
        write_json(run_dir / f"iter_{i:04d}" / "eval" / "metrics.json", metrics)
    return run_dir


def test_table_of_one_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _make_run(tmp_path, "paper_ppo_think_vanilla")
    prefix = tmp_path / "out" / "table"
    assert cli.main(["table", str(run), "--out", str(prefix)]) == 0
    out = capsys.readouterr()
    assert "wrote" in out.err
    md = out.out
    assert md == (tmp_path / "out" / "table.md").read_text(encoding="utf-8")
    assert md.splitlines()[0] == (
        "| source | run | iteration | model | setting | benchmark | n | score | success | "
        "failure |")
    run_name = "paper_ppo_think_vanilla-cpu"
    assert (f"| run | {run_name} | 0 | smollm2-135m-instruct | base | heuristic, vanilla | 4 "
            "| 53.3 | 25% | 25% |") in md
    assert f"| run | {run_name} | 1 | smollm2-135m-instruct | PPO, think | " in md
    assert "| 92.5 | 75% | 0% |" in md
    # The paper's rows for this setting: the base model and PPO think (Tables 1 and 3).
    assert ("| paper Table 1 |  |  | Qwen2.5-7B-Instruct | base | Sentient | 100 | 13.3 | 2% "
            "| 76% |") in md
    assert "| PPO, think | Sentient | 100 | 79.2 | 42% | 9% |" in md
    assert "| PPO, think | Sentient-challenging | 100 | 59.6 | — | — |" in md
    assert "GRPO" not in md

    rows = list(csv.DictReader(io.StringIO(
        (tmp_path / "out" / "table.csv").read_text(encoding="utf-8"))))
    assert len(rows) == 3 + 3
    assert rows[0] == {
        "source": "run", "run": run_name, "iteration": "0", "model": "smollm2-135m-instruct",
        "setting": "base", "benchmark": "heuristic, vanilla", "n": "4", "score": "53.3",
        "success_pct": "25", "failure_pct": "25"}
    assert rows[-1]["success_pct"] == "" and rows[-1]["score"] == "59.6"


def test_runs_side_by_side_last_only(tmp_path: Path) -> None:
    ppo = _make_run(tmp_path, "paper_ppo_think_vanilla")
    grpo = _make_run(tmp_path, "paper_grpo_nothink_challenging")
    rows = build_table([ppo, grpo], last_only=True)
    own = [(r.run, r.iteration, r.setting) for r in rows if r.source == "run"]
    assert own == [
        ("paper_ppo_think_vanilla-cpu", 0, "base"),
        ("paper_ppo_think_vanilla-cpu", 2, "PPO, think"),
        ("paper_grpo_nothink_challenging-cpu", 0, "base"),
        ("paper_grpo_nothink_challenging-cpu", 2, "GRPO, no think, challenging simulator"),
    ]
    paper = [(r.source, r.setting, r.benchmark) for r in rows if r.source != "run"]
    # The base model once; the paper has no GRPO challenging-simulator row.
    assert paper == [
        ("paper Table 1", "base", "Sentient"),
        ("paper Table 1", "PPO, think", "Sentient"),
        ("paper Table 3", "PPO, think", "Sentient-challenging"),
    ]


def test_scores_round_half_up_as_published(tmp_path: Path) -> None:
    # 1001 / 20 = 50.05 exactly; float formatting prints 50.0. 1/8 = 12.5% -> 13%.
    finals = [50] * 19 + [51]
    assert f"{sum(finals) / len(finals):.1f}" == "50.0"
    run = _make_run(tmp_path, "smoke", {0: finals, 1: [100] + [50] * 7})
    rows = run_rows(run)
    assert str(rows[0].score) == "50.1" and str(rows[1].success_pct) == "13"


def test_run_without_evaluation_is_refused(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    run = _make_run(tmp_path, "smoke", {})
    assert cli.main(["table", str(run), "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert str(run) in err and "no evaluation results" in err and "Fix:" in err
    assert not list(tmp_path.glob("t.*"))
    assert cli.main(["table", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "not a run directory" in err and "Fix:" in err


def test_damaged_metrics_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _make_run(tmp_path, "smoke")
    bad = run / "iter_0001" / "eval" / "metrics.json"
    write_json(bad, {"iteration": 1, "n": 4})
    assert cli.main(["table", str(run)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "score" in err and "Fix:" in err


def test_report_has_the_runs_table(tmp_path: Path) -> None:
    run = _make_run(tmp_path, "paper_grpo_think_vanilla")
    index = build_report(run, tmp_path / "report")
    page = index.read_text(encoding="utf-8")
    assert "<h2>Paper-style table</h2>" in page
    assert "<td>GRPO, think</td>" in page and "<td>72.0</td>" in page
    rows = run_rows(run)
    assert len(rows) == 3
    md = (tmp_path / "report" / "table.md").read_text(encoding="utf-8")
    assert md == to_markdown(build_table([run]))
    assert (tmp_path / "report" / "table.csv").is_file()


def test_report_before_any_evaluation_shows_the_papers_rows(tmp_path: Path) -> None:
    run = _make_run(tmp_path, "paper_ppo_nothink_challenging", {})
    page = build_report(run, tmp_path / "report").read_text(encoding="utf-8")
    assert "No evaluation yet; the paper" in page and "<td>19.8</td>" in page


def test_paper_numbers_match_the_paper_notes() -> None:
    text = shared("reference/paper.md").read_text(encoding="utf-8")
    published = {}
    labels = {"Qwen2.5-7B-Instruct (base)": None, "+ PPO, no think": ("ppo", "nothink"),
              "+ PPO, think": ("ppo", "think"), "+ GRPO, no think": ("grpo", "nothink"),
              "+ GRPO, think": ("grpo", "think")}
    for label, score, success, failure in re.findall(
            r"^\| ([^|]+?) \| ([\d.]+) / (\d+)% / (\d+)% \|", text, re.M):
        if label in labels:
            published[labels[label]] = (float(score), int(success), int(failure))
    assert len(published) == 5
    table1 = {
        None if r.algorithm is None else (r.algorithm, r.template):
        (r.score, r.success_pct, r.failure_pct)
        for r in paper_numbers.RESULTS if r.table == "Table 1"
    }
    assert table1 == published

    flat = " ".join(text.split())
    table3 = {}
    for difficulty, nothink, nothink_c, think, think_c in re.findall(
            r"(vanilla|challenging) simulator, no think (\d+\.\d) / (\d+\.\d), "
            r"think (\d+\.\d) / (\d+\.\d)", flat):
        for template, sentient, challenging in (("nothink", nothink, nothink_c),
                                                ("think", think, think_c)):
            table3[template, difficulty, "Sentient"] = float(sentient)
            table3[template, difficulty, "Sentient-challenging"] = float(challenging)
    assert len(table3) == 8
    ours = {(r.template, r.difficulty, r.benchmark): r.score
            for r in paper_numbers.RESULTS if r.table == "Table 3"}
    # Table 3's vanilla Sentient scores are Table 1's PPO rows, kept there only.
    for template in ("nothink", "think"):
        ours[template, "vanilla", "Sentient"] = table1["ppo", template][0]
    assert ours == table3
