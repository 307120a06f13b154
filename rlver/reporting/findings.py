"""What the run's own numbers say, for the notes under the report's learning curve: the
held-out score's change against its paired standard error, what the optimizer steps in
between let one expect when the change is within that swing, whether the evaluation
dialogues changed at all, and whether the replies are mostly cut at their token cap.
Every sentence is computed from the run's files; none is said of a run it does not fit.
"""

from __future__ import annotations

import html
from typing import Any, Optional

from rlver.metrics import paired_gain

#: Below this many optimizer steps a change within the benchmark's swing is what to
#: expect: the cpu_learning experiment (docs/results.md) needs about 20 to gain its +10
#: points, the paper's curves reach 210 (GRPO) to 350 (PPO).
FEW_STEPS = 20
#: From this share of replies cut at the token cap on, the report says so.
MOSTLY_CUT = 0.5

#: (iteration, its update's metrics)
Update = tuple[int, dict[str, Any]]
#: (iteration, its evaluation's dialogues: persona_id, final_emotion, messages, truncated)
Evaluation = tuple[int, list[dict[str, Any]]]


def notes(cfg: dict[str, Any], updates: list[Update], first: Optional[Evaluation],
          last: Optional[Evaluation]) -> str:
    """The notes as HTML paragraphs (empty where the run has nothing to say yet)."""
    return gain_note(cfg, updates, first, last) + cut_note(cfg, updates, last)


def gain_note(cfg: dict[str, Any], updates: list[Update], first: Optional[Evaluation],
              last: Optional[Evaluation]) -> str:
    """The held-out change from the first to the last evaluation, measured against its
    own swing (the paired standard error over the benchmark's personas)."""
    if first is None or last is None or first[0] == last[0]:
        return ""
    (i0, rows0), (i1, rows1) = first, last
    try:
        gain, se, n = paired_gain(*({r["persona_id"]: int(r["final_emotion"]) for r in rows}
                                    for rows in (rows0, rows1)))
    except ValueError:
        return ""
    steps = sum(int(u.get("optimizer_steps", 0)) for i, u in updates if i0 <= i < i1)
    if gain > 2 * se:
        verdict = "more than twice its standard error: the policy improved on these personas"
    elif gain < -2 * se:
        verdict = ("a fall of more than twice its standard error: the policy got worse on "
                   "these personas")
    else:
        verdict = ("within twice its standard error: the benchmark's own swing; more "
                   "iterations (or more benchmark personas) are needed to tell")
        if steps < FEW_STEPS:
            verdict += (f". {steps} optimizer steps are few: the cpu_learning experiment "
                        f"needs about {FEW_STEPS} to gain its +10 points (docs/results.md)")
    lr = (cfg.get("algorithm") or {}).get("lr")
    text = (f"Held-out score from iteration {i0} to {i1}: {gain:+.1f} points (mean final "
            f"emotion of the same {n} benchmark personas; paired standard error {se:.1f}) "
            f"after {steps} optimizer steps (lr {lr}), {verdict}. Each point is one greedy "
            "dialogue per persona, so neighbouring evaluations can move by a few points "
            "without the policy getting better or worse (docs/results.md has a longer "
            "run's curve).")
    before = {r["persona_id"]: r["messages"] for r in rows0}
    same = sum(before.get(r["persona_id"]) == r["messages"] for r in rows1)
    if same:
        text += (f" {same} of the {len(rows1)} evaluation dialogues of iteration {i1} are "
                 f"word for word those of iteration {i0}.")
    return f"<p>{html.escape(text)}</p>"


def cut_note(cfg: dict[str, Any], updates: list[Update], last: Optional[Evaluation]) -> str:
    """A warning when most replies (training, latest update; or evaluation, latest
    evaluation) end at their token cap rather than on their own."""
    parts = []
    latest = [(i, u) for i, u in updates if u.get("truncated_share") is not None]
    if latest and float(latest[-1][1]["truncated_share"]) >= MOSTLY_CUT:
        i, u = latest[-1]
        parts.append(f"{float(u['truncated_share']):.0%} of the training replies of update "
                     f"{i} (rollout.max_new_tokens {cfg['rollout']['max_new_tokens']})")
    flags = [bool(f) for r in (last[1] if last else []) for f in (r.get("truncated") or [])]
    if flags and sum(flags) / len(flags) >= MOSTLY_CUT:
        parts.append(f"{sum(flags) / len(flags):.0%} of the evaluation replies of iteration "
                     f"{last[0] if last else ''} (evaluation.max_new_tokens "
                     f"{cfg['evaluation']['max_new_tokens']})")
    if not parts:
        return ""
    text = (f"Most replies are cut at their token cap: {' and '.join(parts)}. The policy is "
            "stopped mid-sentence (the example dialogues below show it), so the simulated "
            "users score cut-off replies; raise the caps for replies that end on their own.")
    return f'<p class="warn">{html.escape(text)}</p>'
