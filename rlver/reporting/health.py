"""The update's health in the run report: its columns in the table and its figure
(reply length, replies cut at max_new_tokens, zero-spread groups; rlver.train.metrics),
and the engine-trainer gap (rlver.train.mismatch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlver.reporting import plots

#: The health columns of the report's table: (column, key of update metrics, format).
COLUMNS = [("reply length", "reply_length_mean", "{:.1f}"),
           ("longest reply", "reply_length_max", "{:.0f}"),
           ("replies cut", "truncated_share", "{:.0%}"),
           ("zero-spread groups", "zero_spread_groups", "{:.0%}"),
           ("advantage std", "adv_std", "{:.3g}"),
           ("entropy", "entropy", "{:.3g}"),
           ("approx KL", "approx_kl", "{:.3g}"),
           ("clip fraction", "clip_fraction", "{:.3g}"),
           ("first step clipped", "clip_fraction_first_step", "{:.3g}"),
           ("log-prob gap (mean)", "logp_gap_mean", "{:.2g}"),
           ("log-prob gap (max)", "logp_gap_max", "{:.2g}"),
           ("engine-trainer KL", "rollout_kl", "{:.2g}"),
           ("error rows left out", "excluded_error_rows", "{:.0f}")]


def plot(updates: list[tuple[int, dict[str, Any]]], path: Path) -> None:
    """Reply length, the share of replies cut at max_new_tokens and of GRPO groups without
    reward spread, from each (iteration, update metrics)."""
    fig, axes = plots.figure((10.0, 3.5), ncols=3)
    panels = [("Reply length (tokens)", [("mean", "reply_length_mean"),
                                         ("max", "reply_length_max")]),
              ("Replies cut at max_new_tokens", [("share", "truncated_share")]),
              ("Groups with zero reward spread", [("share", "zero_spread_groups")])]
    for ax, (title, series) in zip(axes[0], panels, strict=True):
        drawn, top = [], 1.0
        for label, key in series:
            pts = [(i, float(u[key])) for i, u in updates if u.get(key) is not None]
            if pts:
                ax.plot([i for i, _ in pts], [v for _, v in pts], marker="o", label=label)
                drawn += [i for i, _ in pts]
                top = max(top, *(v for _, v in pts))
        if drawn:
            ax.set_xticks(sorted(set(drawn)))
            if len(series) > 1:
                ax.legend(loc="best")
        else:
            plots.no_data(ax, "no update metrics yet")
        ax.set_ylim(*((0, 1.15 * top) if title == panels[0][0] else (-0.02, 1.02)))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    plots.save(fig, path)
