"""How long does the policy's first reply run when no cap cuts it? The share of replies
that end on their own (the end-of-turn token) within each token cap, and the share whose
first paragraph, first sentence or second sentence ends there (rlver.engines.sentences,
the rule of `rollout.max_sentences`).

    .venv/bin/python bench/reply_lengths.py --run results/default
    .venv/bin/python bench/reply_lengths.py --run results/default \
        --system "... Reply in one or two short sentences."

Takes the opening user message of each persona the run's rollouts and evaluations met,
the run's base model (`resources/models/<model.name>` beside its results, or --model) and
its system prompt (the frozen config's `template.system_prompt`, or each --system given),
and samples one reply to each at the run's `rollout.temperature` (or --temperature) up to
--max-tokens, seeded, with transformers' generate. Prints a table (system prompt, share
ended within each cap, the run's own cap marked) and last `ended_at_run_cap=<share>` for
the first prompt: the share of first replies the run's cap does not cut.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pyarrow.parquet as pq
import yaml

CAPS = (32, 48, 64, 96, 128, 160, 256)
#: How a reply may end: by itself, or at the first paragraph / sentence(s) (or by itself
#: before that).
ROWS = ("end of turn", "paragraph", "1 sentence", "2 sentences")


def openings(run: Path) -> list[str]:
    """The first user message of each persona's dialogues in the run's rollouts and
    evaluations."""
    seen: dict[str, str] = {}
    files = [*sorted(run.glob("iter_*/rollouts/shard_*.parquet")),
             *sorted(run.glob("iter_*/eval/dialogues.parquet"))]
    for path in files:
        for row in pq.read_table(path, columns=["persona_id", "messages"]).to_pylist():
            seen.setdefault(row["persona_id"], row["messages"][0]["content"])
    if not seen:
        sys.exit(f"{run}: no rollout shard or evaluation; run the experiment's first "
                 "rollouts first (or pass another run).")
    return list(seen.values())


def lengths(model, tok, system: str, users: list[str], temperature: float, max_tokens: int,
            seed: int) -> dict[str, list[int | None]]:
    """Per user message, the reply's length in tokens where it ended (one of the rollout
    engines' stop tokens), where its first paragraph ended (a token holding a newline, or
    the end), and where its first and second sentence ended (rlver.engines.sentences, or
    the end); None: not within max_tokens. The prompts are the rollout's own ids."""
    import torch

    from rlver.chat import ChatTokens
    from rlver.engines.base import stop_tokens
    from rlver.engines.sentences import SentenceEnds

    torch.manual_seed(seed)
    stops = set(stop_tokens(tok, model.generation_config))
    newline = {i for t, i in tok.get_vocab().items() if "\u010a" in t or "\n" in t}
    chat = ChatTokens(tok, system)
    enc = tok.pad({"input_ids": [chat.start(u) for u in users]}, padding_side="left",
                  return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_tokens, do_sample=True,
                             temperature=temperature, top_p=1.0, top_k=0,
                             pad_token_id=min(stops))
    sentences = SentenceEnds(tok)
    out_lens: dict[str, list[int | None]] = {k: [] for k in ROWS}
    for row in out[:, enc["input_ids"].shape[1]:].tolist():
        end = next((k + 1 for k, t in enumerate(row) if t in stops), None)
        para = next((k + 1 for k, t in enumerate(row) if t in stops or t in newline), None)
        cuts = sentences.lengths(row[:end] if end else row)
        out_lens["end of turn"].append(end)
        out_lens["paragraph"].append(para)
        for n, key in ((1, "1 sentence"), (2, "2 sentences")):
            at = cuts[n - 1] if len(cuts) >= n else None
            out_lens[key].append(min(x for x in (at, end) if x) if at or end else None)
    return out_lens


def within(lens: list[int | None], cap: int) -> float:
    return sum(1 for n in lens if n is not None and n <= cap) / len(lens)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="results/<run> with rollouts")
    ap.add_argument("--model", type=Path, help="the base model (default: the run's)")
    ap.add_argument("--system", action="append", default=[],
                    help="a system prompt to measure (repeatable; default: the run's)")
    ap.add_argument("--max-tokens", type=int, default=max(CAPS))
    ap.add_argument("--temperature", type=float, help="default: the run's rollout.temperature")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    import torch

    from rlver.models import load_policy

    cfg = yaml.safe_load((a.run / "config.yaml").read_text())
    model_dir = a.model or a.run.parents[1] / "resources" / "models" / cfg["model"]["name"]
    torch.set_num_threads(1)
    model, tok = load_policy(model_dir)
    users = openings(a.run)
    cap = cfg["rollout"]["max_new_tokens"]
    temperature = a.temperature or cfg["rollout"]["temperature"]
    prompts = a.system or [cfg["template"]["system_prompt"]]
    caps = sorted({c for c in CAPS if c <= a.max_tokens} | {cap})
    print(f"{len(users)} openings of {a.run}, temperature {temperature}, run's cap {cap}; "
          f"share of replies ended within each cap: by the end-of-turn token, or at the end "
          f"of the first paragraph / sentence(s)")
    print(f"{'prompt':>6} {'ended at':>12} "
          + " ".join(f"{('*' if c == cap else '') + str(c):>5}" for c in caps))
    first_share = None
    for k, system in enumerate(prompts):
        lens = lengths(model, tok, system, users, temperature, a.max_tokens, a.seed)
        for row in ROWS:
            cells = " ".join(f"{within(lens[row], c):5.0%}" for c in caps)
            print(f"{k:>6} {row:>12} {cells}")
        if first_share is None:
            first_share = within(lens["end of turn"], cap)
    for k, system in enumerate(prompts):
        print(f"prompt {k}: {system}")
    print(f"ended_at_run_cap={first_share:.2f}")


if __name__ == "__main__":
    main()
