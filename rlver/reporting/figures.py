"""The report's figures: learning curve, outcomes, emotion trajectories (and the
update's health, rlver.reporting.health), as PNGs of fixed size."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from rlver.reporting import health, plots
from rlver.reporting.iterations import Iteration, reward_of
from rlver.schema import OUTCOMES

_OUTCOME_COLORS = {
    "success": "#2ca02c",
    "failure": "#d62728",
    "goodbye": "#1f77b4",
    "max_turns": "#7f7f7f",
    "error": "#9467bd",
}
#: The figures, in the page's order (their file names in the report folder).
FIGURES = ("learning_curve.png", "outcomes.png", "emotion_trajectories.png",
           "training_health.png")


def plot_all(
    iterations: list[Iteration],
    last_eval: Iteration | None,
    eval_rows: list[dict[str, Any]],
    out: Path,
) -> None:
    """All figures under matplotlib's default style, whatever the user's matplotlibrc says."""
    plt = plots.pyplot()
    with plt.style.context("default"), plt.rc_context({"svg.hashsalt": "rlver"}):
        _plot_learning_curve(iterations, out / "learning_curve.png")
        _plot_outcomes(iterations, out / "outcomes.png")
        _plot_emotions(
            eval_rows, last_eval.index if last_eval else None, out / "emotion_trajectories.png"
        )
        health.plot([(it.index, it.update) for it in iterations if it.update is not None],
                    out / "training_health.png")


def _plot_learning_curve(iterations: list[Iteration], path: Path) -> None:
    fig, axes = plots.figure((7.0, 4.0))
    ax = axes[0][0]
    train = [(it.index, reward_of(it)) for it in iterations]
    train = [(i, 100.0 * r) for i, r in train if r is not None]
    ev = [
        (it.index, float(it.eval["score"]))
        for it in iterations
        if it.eval is not None and it.eval.get("score") is not None
    ]
    if train:
        ax.plot([i for i, _ in train], [v for _, v in train], marker="o", label="train reward x100")
    if ev:
        ax.plot([i for i, _ in ev], [v for _, v in ev], marker="s", label="eval score")
    if train or ev:
        ax.legend(loc="best")
        ax.set_xticks(sorted({i for i, _ in train} | {i for i, _ in ev}))
    else:
        plots.no_data(ax, "no rollouts or evaluations yet")
    ax.set_ylim(0, 100)
    ax.set_xlabel("iteration")
    ax.set_ylabel("emotion (0-100)")
    ax.set_title("Learning curve")
    ax.grid(alpha=0.3)
    plots.save(fig, path)


def _plot_outcomes(iterations: list[Iteration], path: Path) -> None:
    fig, axes = plots.figure((10.0, 4.0), ncols=2)
    series = [
        (
            "train (rollouts)",
            {it.index: it.train_outcomes for it in iterations if it.train_dialogues},
        ),
        (
            "eval",
            {it.index: it.eval.get("outcomes", {}) for it in iterations if it.eval is not None},
        ),
    ]
    for ax, (title, counts) in zip(axes[0], series, strict=True):
        xs = sorted(counts)
        bottom = [0] * len(xs)
        for o in OUTCOMES:
            h = [int(counts[i].get(o, 0)) for i in xs]
            if xs:
                ax.bar(xs, h, bottom=bottom, color=_OUTCOME_COLORS[o], label=o)
            bottom = [b + v for b, v in zip(bottom, h, strict=True)]
        if xs:
            ax.set_xticks(xs)
        else:
            plots.no_data(ax, "no data yet")
        plots.integer_axis(ax.yaxis)
        ax.set_title(f"Outcomes, {title}")
        ax.set_xlabel("iteration")
        ax.set_ylabel("dialogues")
    handles = [h for ax in axes[0] for h in ax.get_legend_handles_labels()[0]]
    if handles:
        fig.legend(handles=handles[: len(OUTCOMES)], loc="outside right upper")
    plots.save(fig, path)


def _trajectory(row: dict[str, Any]) -> list[int]:
    return [int(row["emotion_start"]), *(int(e) for e in row["emotion"])]


def _plot_emotions(rows: list[dict[str, Any]], iteration: int | None, path: Path) -> None:
    fig, axes = plots.figure((7.0, 4.0))
    ax = axes[0][0]
    if rows:
        trajs = [_trajectory(r) for r in rows]
        for t in trajs:
            ax.plot(range(len(t)), t, color="tab:blue", alpha=0.35, linewidth=0.8)
        # An ended dialogue keeps its final emotion, so the mean covers every dialogue.
        n = max(len(t) for t in trajs)
        mean = [statistics.fmean(t[min(k, len(t) - 1)] for t in trajs) for k in range(n)]
        ax.plot(range(n), mean, color="black", linewidth=2.0, label="mean (ended = final)")
        ax.legend(loc="best")
        ax.set_title(f"Emotion per turn, eval of iteration {iteration} ({len(rows)} dialogues)")
    else:
        plots.no_data(ax, "no evaluation yet")
        ax.set_title("Emotion per turn")
    ax.set_ylim(0, 100)
    plots.integer_axis(ax.xaxis)
    ax.set_xlabel("assistant reply (0 = start)")
    ax.set_ylabel("emotion")
    ax.grid(alpha=0.3)
    plots.save(fig, path)
