"""The report's HTML page: the configuration, the iterations' tables, the notes on
what the numbers can show, the figures (inlined) and example dialogues."""

from __future__ import annotations

import base64
import html
from typing import Any

from rlver.fallbacks import RATE_KEY
from rlver.reporting import health
from rlver.reporting import table as rtable
from rlver.reporting.iterations import Iteration
from rlver.schema import OUTCOMES


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


def _iteration_table(iterations: list[Iteration]) -> str:
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


def _health_table(iterations: list[Iteration]) -> str:
    rows = [[_e(it.index), *(_num(it.update.get(key), fmt) for _, key, fmt in health.COLUMNS)]
            for it in iterations if it.update is not None]
    if not rows:
        return "<p>No update yet.</p>"
    return _table(["iteration", *(name for name, _, _ in health.COLUMNS)], rows)


def _fallbacks(it: Iteration) -> str:
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


def paper_table(rows: list[rtable.Row], evaluated: bool) -> str:
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


def _outcome_table(iterations: list[Iteration]) -> str:
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


def render_page(
    cfg: dict[str, Any],
    cfg_hash: str,
    iterations: list[Iteration],
    last_eval: Iteration | None,
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
