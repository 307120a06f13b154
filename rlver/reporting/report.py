"""The run report: one self-contained HTML page plus PNG figures and the paper-style table
(table.md, table.csv; rlver.reporting.table), from whatever exists.

The report reads a run directory as it stands (a run may be half-way through, with no
update or evaluation yet) and writes nothing but `out_dir`, built in a temporary
directory and renamed into place, so a crash never leaves a half report.
Figures use fixed sizes and PNG metadata without the matplotlib version, so rerunning
the report on the same run gives byte-identical files.
"""

from __future__ import annotations

import base64
import html
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from rlver import config as rconfig
from rlver import faults, layout
from rlver.errors import RlverInputError
from rlver.io import atomic_path, read_json_object
from rlver.reporting import findings, health, plots, settings
from rlver.reporting import table as rtable
from rlver.schema import OUTCOMES, read_metadata
from rlver.simulator.health import RATE_KEY, fallback_stats

#: Columns the report needs from rollout files; token columns are skipped (large).
_TRAIN_COLUMNS = ["sample", "reward", "outcome", "final_emotion", "num_turns", "parse_error",
                  "reason"]
#: Columns the report needs from eval dialogues.
_EVAL_COLUMNS = [
    "dialogue",
    "sample",
    "persona_id",
    "messages",
    "emotion_start",
    "emotion",
    "delta",
    "reason",
    "parse_error",
    "truncated",
    "num_turns",
    "outcome",
    "final_emotion",
]
_OUTCOME_COLORS = {
    "success": "#2ca02c",
    "failure": "#d62728",
    "goodbye": "#1f77b4",
    "max_turns": "#7f7f7f",
    "error": "#9467bd",
}
_FIGURES = ("learning_curve.png", "outcomes.png", "emotion_trajectories.png",
            "training_health.png")

@dataclass
class _Iteration:
    """What the run directory holds for one iteration; None/empty where not written yet."""

    index: int
    train_dialogues: int = 0
    train_reward: float | None = None
    train_outcomes: dict[str, int] = field(default_factory=dict)
    train_fallback_rate: float | None = None
    update: dict[str, Any] | None = None
    eval: dict[str, Any] | None = None
    eval_dialogues_path: Path | None = None


def build_report(run_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Write `out_dir/index.html` and its PNG figures for the run in `run_dir`.

    Plain path arguments and a returned path so a CLI can call it directly; bad input
    raises RlverInputError (file + fix). Returns the path of `index.html`.
    """
    run_dir = Path(run_dir)
    out_dir = Path(out_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise RlverInputError(
            f"{cfg_path}: frozen run config not found, so {run_dir} is not a run directory. "
            "Fix: pass results/<run> of a started run (snakemake writes config.yaml first)."
        )
    cfg = rconfig.load(cfg_path)
    cfg_dict = rconfig.to_container(cfg)
    iterations = _scan(run_dir)
    evaluated = [it for it in iterations if it.eval_dialogues_path is not None]
    last_eval = evaluated[-1] if evaluated else None
    eval_rows = _read_eval_rows(last_eval.eval_dialogues_path) if last_eval else []
    first_eval = evaluated[0] if len(evaluated) > 1 else None
    notes = findings.notes(
        cfg_dict, [(it.index, it.update) for it in iterations if it.update is not None],
        (first_eval.index, _read_eval_rows(first_eval.eval_dialogues_path))
        if first_eval else None,
        (last_eval.index, eval_rows) if last_eval else None)
    own_rows = rtable.run_rows(run_dir)
    table_rows = own_rows + rtable.paper_rows(run_dir)

    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        _plot_all(iterations, last_eval, eval_rows, tmp)
        images = {name: (tmp / name).read_bytes() for name in _FIGURES}
        rtable.write_table(table_rows, tmp / "table")
        page = _render_page(
            cfg_dict, rconfig.run_hash(cfg_path), iterations, last_eval, eval_rows, images,
            _paper_table(table_rows, bool(own_rows)), settings.rows(cfg_dict, run_dir), notes,
        )
        (tmp / "index.html").write_text(page, encoding="utf-8")
        faults.point("report.before_rename")
    index = out_dir / "index.html"
    n_eval = sum(it.eval is not None for it in iterations)
    print(
        f"report: wrote {index} ({len(iterations)} iterations, {n_eval} evaluated)",
        file=sys.stderr,
    )
    return index


# --------------------------------------------------------------------------- reading


def _scan(run_dir: Path) -> list[_Iteration]:
    """Collect per-iteration numbers from every iteration folder, in iteration order."""
    run = layout.Run(run_dir)
    found: list[_Iteration] = []
    for i in run.iterations():
        it = _Iteration(index=i)
        shards = sorted(run.rollouts_dir(i).glob("shard_*.parquet"))
        if shards:
            _read_train(it, shards)
        if run.update_metrics(i).is_file():
            it.update = _read_json(run.update_metrics(i))
        if run.eval_metrics(i).is_file():
            it.eval = _read_json(run.eval_metrics(i))
        if run.eval_dialogues(i).is_file():
            it.eval_dialogues_path = run.eval_dialogues(i)
        if shards or it.update or it.eval or it.eval_dialogues_path:
            found.append(it)
    return found


def _read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path, "delete it and rerun the stage that writes it.")


def _read_columns(path: Path, columns: list[str]) -> list[dict[str, Any]]:
    """Rows of a validated trajectory file, only `columns` (token columns can be huge)."""
    read_metadata(path)  # schema version and columns checked, with a clear error
    try:
        return pq.read_table(path, columns=columns).to_pylist()
    except Exception as exc:  # pyarrow raises several types for damaged pages
        raise RlverInputError(
            f"{path}: cannot read the Parquet data ({exc}). "
            "Fix: delete the file and rerun the stage that writes it."
        ) from exc


def _read_train(it: _Iteration, shards: list[Path]) -> None:
    """Train reward and outcomes per dialogue: rows with sample == 0 (one per dialogue)."""
    rows = [r for p in shards for r in _read_columns(p, _TRAIN_COLUMNS) if r["sample"] == 0]
    it.train_dialogues = len(rows)
    if rows:
        it.train_reward = statistics.fmean(float(r["reward"]) for r in rows)
    it.train_outcomes = {o: sum(r["outcome"] == o for r in rows) for o in OUTCOMES}
    it.train_fallback_rate = fallback_stats(rows)[RATE_KEY]


def _read_eval_rows(path: Path | None) -> list[dict[str, Any]]:
    if path is None:
        return []
    rows = [r for r in _read_columns(path, _EVAL_COLUMNS) if r["sample"] == 0]
    return sorted(rows, key=lambda r: r["dialogue"])


def _train_reward(it: _Iteration) -> float | None:
    """Rollout mean reward, else the update's reward_mean (rollouts may be cleaned up)."""
    if it.train_reward is not None:
        return it.train_reward
    if it.update is not None and it.update.get("reward_mean") is not None:
        return float(it.update["reward_mean"])
    return None


# --------------------------------------------------------------------------- figures


def _plot_all(
    iterations: list[_Iteration],
    last_eval: _Iteration | None,
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


def _plot_learning_curve(iterations: list[_Iteration], path: Path) -> None:
    fig, axes = plots.figure((7.0, 4.0))
    ax = axes[0][0]
    train = [(it.index, _train_reward(it)) for it in iterations]
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


def _plot_outcomes(iterations: list[_Iteration], path: Path) -> None:
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


def _health_table(iterations: list[_Iteration]) -> str:
    rows = [[_e(it.index), *(_num(it.update.get(key), fmt) for _, key, fmt in health.COLUMNS)]
            for it in iterations if it.update is not None]
    if not rows:
        return "<p>No update yet.</p>"
    return _table(["iteration", *(name for name, _, _ in health.COLUMNS)], rows)


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


# --------------------------------------------------------------------------- HTML


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, fmt: str = "{:.3f}") -> str:
    if value is None:
        return "&mdash;"
    if isinstance(value, float):
        return _e(fmt.format(value))
    return _e(value)


def _table(header: list[str], rows: list[list[str]]) -> str:
    """Cells must already be escaped; header is plain text."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(name: str, data: bytes, alt: str) -> str:
    b64 = base64.b64encode(data).decode("ascii")
    return f'<a href="{_e(name)}"><img src="data:image/png;base64,{b64}" alt="{_e(alt)}"></a>'


def _iteration_table(iterations: list[_Iteration]) -> str:
    rows = []
    for it in iterations:
        up = it.update or {}
        ev = it.eval or {}
        rows.append(
            [
                _e(it.index),
                _num(it.train_dialogues or None),
                _num(it.train_reward),
                _num(up.get("loss"), "{:.4g}"),
                _num(up.get("grad_norm"), "{:.3g}"),
                _num(ev.get("n")),
                _num(ev.get("score"), "{:.1f}"),
                _rate(ev.get("success"), ev.get("success_rate")),
                _rate(ev.get("failure"), ev.get("failure_rate")),
                _num(ev.get("mean_turns"), "{:.2f}"),
                _fallbacks(it),
                _e(str(ev.get("policy_sha256", ""))[:12]) or "&mdash;",
            ]
        )
    header = [
        "iteration",
        "train dialogues",
        "train reward",
        "loss",
        "grad norm",
        "eval n",
        "eval score",
        "eval success",
        "eval failure",
        "eval turns",
        "simulator fallback (train / eval)",
        "policy sha256",
    ]
    return _table(header, rows)


def _fallbacks(it: _Iteration) -> str:
    """The share of simulator turns that fell back, in the rollouts and the evaluation."""
    train = it.train_fallback_rate
    if train is None and it.update is not None:  # the rollouts may be cleaned up
        train = it.update.get(RATE_KEY)
    ev = (it.eval or {}).get(RATE_KEY)
    if train is None and ev is None:
        return "&mdash;"
    return " / ".join("&mdash;" if v is None else _e(f"{100.0 * float(v):.1f}%")
                      for v in (train, ev))


def _rate(count: Any, rate: Any) -> str:
    if count is None:
        return "&mdash;"
    if rate is None:
        return _e(count)
    return _e(f"{count} ({100.0 * float(rate):.0f}%)")


def _paper_table(rows: list[rtable.Row], evaluated: bool) -> str:
    """The run's rows of `rlver table` and the paper's for its setting (also table.md/.csv)."""
    intro = (
        "Benchmark score, success and failure of each evaluated iteration (0: the base "
        "model), then the paper's published numbers for this setting, for reference."
        if evaluated
        else "No evaluation yet; the paper's published numbers for this setting:"
    )
    cells = [[_e(c) for c in r.cells()] for r in rows]
    return (
        f"<p>{_e(intro)} Also as <a href=\"table.md\">table.md</a> and "
        f'<a href="table.csv">table.csv</a>.</p>' + _table(rtable.HEADER, cells)
    )


def _outcome_table(iterations: list[_Iteration]) -> str:
    rows = []
    for it in iterations:
        if it.train_dialogues:
            rows.append(
                [_e(it.index), "train", *(_e(it.train_outcomes.get(o, 0)) for o in OUTCOMES)]
            )
        if it.eval is not None:
            out = it.eval.get("outcomes", {})
            rows.append([_e(it.index), "eval", *(_e(out.get(o, 0)) for o in OUTCOMES)])
    if not rows:
        return "<p>No rollouts or evaluations yet.</p>"
    return _table(["iteration", "split", *OUTCOMES], rows)


def _examples(rows: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Best, median and worst final emotion (ties broken by dialogue index), distinct."""
    if not rows:
        return []
    ranked = sorted(rows, key=lambda r: (r["final_emotion"], r["dialogue"]))
    picks = [("best", ranked[-1]), ("median", ranked[len(ranked) // 2]), ("worst", ranked[0])]
    seen: set[int] = set()
    out = []
    for label, r in picks:
        if r["dialogue"] not in seen:
            seen.add(r["dialogue"])
            out.append((label, r))
    return out


def _turn_note(row: dict[str, Any], k: int) -> str:
    """The simulator's verdict on assistant reply k."""
    if k >= len(row["emotion"]):
        return ""
    delta = int(row["delta"][k])
    note = (
        f'<div class="note">emotion {_e(row["emotion"][k])} '
        f"(delta {_e(f'{delta:+d}')}): {_e(row['reason'][k])}"
    )
    if row["parse_error"][k]:
        note += ' <span class="warn">[simulator output did not parse]</span>'
    return note + "</div>"


def _dialogue(label: str, row: dict[str, Any]) -> str:
    """One dialogue; a user message after assistant reply k carries reply k's verdict."""
    head = (
        f"<h3>{_e(label)}: dialogue {_e(row['dialogue'])}, persona "
        f"{_e(row['persona_id'])}</h3><p>outcome {_e(row['outcome'])}, "
        f"{_e(row['num_turns'])} turns, emotion {_e(row['emotion_start'])} &rarr; "
        f"{_e(row['final_emotion'])}</p>"
    )
    parts = [head]
    msgs = row["messages"] or []
    k = -1  # index of the latest assistant reply
    pending = False  # reply k's verdict not yet shown
    for m in msgs:
        role = str(m.get("role", ""))
        note = ""
        if role == "assistant":
            if pending:
                parts.append(_turn_note(row, k))
            k += 1
            pending = True
        elif role == "user" and pending:
            note, pending = _turn_note(row, k), False
        parts.append(
            f'<div class="msg {_e(role)}"><div class="role">{_e(role)}</div>'
            f'<div class="content">{_e(m.get("content", ""))}</div>{note}</div>'
        )
    if pending:
        parts.append(_turn_note(row, k))
    return '<div class="dialogue">' + "".join(parts) + "</div>"


_CSS = """
body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}
img{max-width:100%}
.dialogue{border:1px solid #ddd;border-radius:6px;padding:0.5em 1em;margin:1em 0}
.msg{margin:0.5em 0;padding:0.4em 0.7em;border-radius:6px}
.msg.user{background:#f4f4f4}
.msg.assistant{background:#e8f0fe;margin-left:3em}
.role{font-size:0.75em;color:#666;text-transform:uppercase}
.content{white-space:pre-wrap}
.note{font-size:0.85em;color:#555;margin-top:0.3em;font-style:italic}
.warn{color:#b00}
"""


def _render_page(
    cfg: dict[str, Any],
    cfg_hash: str,
    iterations: list[_Iteration],
    last_eval: _Iteration | None,
    eval_rows: list[dict[str, Any]],
    images: dict[str, bytes],
    paper_table: str,
    setting_rows: list[tuple[str, str]],
    notes: str,
) -> str:
    run = cfg.get("run", "")
    keys = [[_e(k), _e(v)] for k, v in [*setting_rows, ("config hash", cfg_hash)]]
    if last_eval is not None and eval_rows:
        examples = "".join(_dialogue(label, r) for label, r in _examples(eval_rows))
        ex_head = f"Example dialogues (eval of iteration {last_eval.index})"
    else:
        examples, ex_head = "<p>No evaluation yet.</p>", "Example dialogues"
    return "".join(
        [
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
            f"<title>RLVER report: {_e(run)}</title><style>{_CSS}</style></head><body>",
            f"<h1>RLVER run {_e(run)}</h1>",
            f"<p>experiment {_e(cfg.get('experiment', ''))}, seed {_e(cfg.get('seed', ''))}</p>",
            "<h2>Configuration</h2>",
            _table(["key", "value"], keys),
            "<h2>Iterations</h2>",
            _iteration_table(iterations) if iterations else "<p>No iterations yet.</p>",
            "<h2>Paper-style table</h2>",
            paper_table,
            "<h2>Learning curve</h2>",
            _img("learning_curve.png", images["learning_curve.png"], "learning curve"),
            notes,
            "<h2>Training health</h2>",
            "<p>Per update: reply length in tokens, the share of replies cut at "
            "<code>rollout.max_new_tokens</code>, the share of GRPO groups whose rewards "
            "are all equal (they carry no gradient), and the update's diagnostics.</p>",
            _health_table(iterations),
            _img("training_health.png", images["training_health.png"], "training health"),
            "<h2>Outcomes</h2>",
            _outcome_table(iterations),
            _img("outcomes.png", images["outcomes.png"], "outcome counts per iteration"),
            "<h2>Emotion trajectories</h2>",
            _img(
                "emotion_trajectories.png",
                images["emotion_trajectories.png"],
                "emotion trajectories",
            ),
            f"<h2>{_e(ex_head)}</h2>",
            examples,
            "</body></html>\n",
        ]
    )
