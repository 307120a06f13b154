"""`rlver results-doc`: the results page of several runs, from their files only."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlver import cli
from rlver.errors import RlverInputError
from rlver.io import write_json

from .test_table import _make_run


def _runs(tmp_path: Path) -> list[Path]:
    """Two seeds' runs: evaluations at iterations 0 and 2, updates at 0 and 1."""
    runs = []
    for k, finals in enumerate([{0: [10, 20, 30, 40], 2: [40, 50, 60, 70]},
                                {0: [0, 20, 20, 20], 2: [20, 30, 40, 50]}]):
        run = _make_run(tmp_path / f"s{k}", "paper_grpo_nothink_vanilla", finals)
        for i, reward in enumerate([0.2 + k / 10, 0.4 + k / 10]):
            write_json(run / f"iter_{i:04d}" / "update" / "metrics.json",
                       {"iteration": i, "reward_mean": reward})
        runs.append(run)
    return runs


def test_page_has_the_curves_the_summary_and_the_table(tmp_path: Path) -> None:
    runs = _runs(tmp_path)
    out = tmp_path / "docs" / "results.md"
    assert cli.main(["results-doc", *map(str, runs), "--out", str(out), "--title", "T",
                     "--command", "make results"]) == 0
    page = out.read_text(encoding="utf-8")
    assert page.startswith("# T\n") and "make results" in page
    # seed 0: 25.0 -> 55.0 (+30.0); seed 1: 15.0 -> 35.0 (+20.0); mean +25.0
    assert "| 25.0 | 2 | 55.0 | +30.0 |" in page and "| 15.0 | 2 | 35.0 | +20.0 |" in page
    assert "Mean change over 2 runs: +25.0 points" in page
    assert "![benchmark score and training reward by iteration](results_curves.png)" in page
    assert (out.parent / "results_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "| source | run | iteration |" in page  # the table of `rlver table`
    assert "Goal" not in page  # no goal given, no verdict


@pytest.mark.parametrize(("goal", "verdict"), [
    ("20", "met** (2 of 2 runs: "), ("25", "NOT met** (1 of 2 runs: "),
    ("40", "NOT met** (0 of 2 runs)."),
])
def test_goal_verdict_follows_the_numbers(tmp_path: Path, goal: str, verdict: str) -> None:
    out = tmp_path / "results.md"
    assert cli.main(["results-doc", *map(str, _runs(tmp_path)), "--out", str(out),
                     "--goal", goal]) == 0
    assert f"rise of at least +{goal} points in every run: {verdict}" in out.read_text()


def test_a_run_without_evaluations_is_refused(tmp_path: Path) -> None:
    run = _make_run(tmp_path, "paper_grpo_nothink_vanilla", finals={})
    with pytest.raises(RlverInputError, match="no iter_\\*/eval/metrics.json"):
        from rlver.reporting.results_doc import write_results_doc

        write_results_doc([run], tmp_path / "r.md", "T", [])
    assert not (tmp_path / "r.md").exists()


def test_the_summary_rounds_a_score_as_the_table_does(tmp_path: Path) -> None:
    """35.25 is 35.3 in both places (half up, as published), not 35.2 in one of them."""
    run = _make_run(tmp_path / "s0", "paper_grpo_nothink_vanilla",
                    {0: [10, 20, 20, 20], 2: [31, 36, 37, 37]})  # 17.5 -> 35.25
    out = tmp_path / "results.md"
    assert cli.main(["results-doc", str(run), "--out", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    assert "| 17.5 | 2 | 35.3 | +17.8 |" in page  # 17.75: half up
    assert "| 35.3 | 0% |" in page and "35.2" not in page
