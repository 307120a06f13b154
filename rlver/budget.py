"""`rlver budget`: what a composed run will cost, before it starts.

GPU-hours and wall time per iteration and for the whole run by stage, disk at the run's
peak and at its end, the share of fixed costs, and the layouts the config allows with
their numbers, from the cost model of rlver/cost.py (docs/scale.md). `snakemake` prints
the one-line summary (`summary_line`) when it composes a run that uses GPUs.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from rlver import cost
from rlver.config import evaluated_iterations
from rlver.errors import RlverInputError

STAGES = ("rollout", "simulated user", "update", "evaluation")
#: Bytes a parameter of a policy folder, by model.dtype.
DTYPE_BYTES = {"bfloat16": 2, "float32": 4}
GB = 1e9


@dataclass(frozen=True)
class Budget:
    """A run's costs: its workload, an estimate per layout (the config's first), notes on
    layouts not priced, and its disk."""

    run: str
    describe: str
    workload: cost.Workload
    estimates: list[cost.Estimate]
    notes: list[str]
    disk: cost.Disk
    inputs: cost.Inputs

    @property
    def own(self) -> cost.Estimate:
        return self.estimates[0]


def parameters(cfg: DictConfig) -> tuple[float, str]:
    """(parameters, where the number comes from) of the base model: model.source's
    safetensors headers, else rlver/data/cost/models.yaml by model.name."""
    from rlver.models import PACKAGE_PREFIX, count_parameters

    source, name = cfg.model.source, cfg.model.name
    if source and not source.startswith(PACKAGE_PREFIX):
        counted = count_parameters(source)
        if counted is not None:
            return float(counted), f"{source}'s safetensors headers"
    known = cost.read_data("models.yaml")
    if name in known:
        return float(known[name]["params"]), "rlver/data/cost/models.yaml"
    raise RlverInputError(
        f"model.source: cannot count the parameters of {source!r} (no safetensors files "
        f"there) and model.name {name!r} is not in rlver/data/cost/models.yaml. Fix: set "
        "model.source to the model's local directory (only its headers are read)."
    )


def model_shape(cfg: DictConfig) -> Optional[dict[str, float]]:
    """The base model's projection widths and layers (what a LoRA adapter's size comes
    from): model.source's config.json, else rlver/data/cost/models.yaml by model.name;
    None where neither has them."""
    from rlver.models import PACKAGE_PREFIX

    source = cfg.model.source
    config = Path(source) / "config.json" if source else None
    if config and not source.startswith(PACKAGE_PREFIX) and config.is_file():
        c = json.loads(config.read_text(encoding="utf-8"))
        keys = ("hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_layers")
        if isinstance(c, dict) and all(k in c for k in keys):
            heads = c["num_attention_heads"]
            head_dim = c.get("head_dim") or c["hidden_size"] // heads
            return {"hidden": c["hidden_size"], "q_dim": heads * head_dim,
                    "kv_dim": c.get("num_key_value_heads", heads) * head_dim,
                    "intermediate": c["intermediate_size"], "layers": c["num_hidden_layers"]}
    known = cost.read_data("models.yaml").get(cfg.model.name, {})
    return known.get("shape")


def adapter_params(cfg: DictConfig, shape: Optional[dict[str, float]]) -> float:
    """The parameters of model.lora's adapter on the base (0 without model.lora)."""
    lora = cfg.model.lora
    if lora is None:
        return 0.0
    if shape is None:
        raise RlverInputError(
            f"model.lora: cannot size the adapter of model {cfg.model.name!r}: model.source "
            "has no config.json and rlver/data/cost/models.yaml no shape for model.name. "
            "Fix: set model.source to the model's local directory (only config.json and "
            "the safetensors headers are read).")
    return cost.adapter_params(lora.rank, list(lora.target_modules), shape)


def served_simulator_gpus(cfg: DictConfig) -> int:
    """GPUs of the simulated user the workflow serves for the run (simulator=served: a
    replica's GPUs times the replicas, held for the whole run, whether or not
    `simulator.serve.model_path` is given yet); 0 for an endpoint of yours."""
    serve = OmegaConf.select(cfg, "simulator.serve", default=None)
    if OmegaConf.select(cfg, "simulator.backend", default=None) != "served" or not serve:
        return 0
    per_replica = serve.get("gpus", serve.get("tensor_parallel", 1))
    return int(per_replica) * int(serve.get("replicas") or 1)


def workload(cfg: DictConfig, params: float, adapter: float = 0.0) -> cost.Workload:
    """What the run computes, from its config (`adapter`: model.lora's parameters)."""
    ro, ev, alg = cfg.rollout, cfg.evaluation, cfg.algorithm
    evaluations = len(evaluated_iterations(cfg))
    return cost.Workload(
        params=params, policy_bytes_per_param=DTYPE_BYTES[cfg.model.dtype],
        models=2 if alg.name == "ppo" else 1, precision=alg.precision,
        zero_stage=alg.zero_stage, dialogues=ro.personas_per_iteration * ro.samples_per_persona,
        turns=cfg.simulator.max_turns, reply_tokens=ro.max_new_tokens,
        think=cfg.template.name == "think", epochs=alg.ppo_epochs, iterations=cfg.iterations,
        evaluations=evaluations, eval_dialogues=ev.num_personas, eval_turns=ev.max_turns,
        eval_reply_tokens=ev.max_new_tokens, keep_state=alg.keep_state_iterations,
        kept_policies=cfg.iterations + 1 if alg.keep_policies == "all" else evaluations,
        adapter_params=adapter,
        full_critic=cfg.model.lora is not None and cfg.model.lora.critic == "full")


def config_layout(cfg: DictConfig) -> cost.Layout:
    """The layout the config asks for."""
    cl = cfg.cluster
    k = cl.iterations_per_job
    update = f"update {cl.nodes}x{cl.gpus_per_node}"
    return cost.Layout(
        name=f"resident blocks of {k}, {update}" if k > 1 else f"per stage, {update}",
        update_gpus=cl.nodes * cl.gpus_per_node, rollout_gpus=cl.rollout.gpus,
        evaluate_gpus=cl.evaluate.gpus, shards=cfg.rollout.shards, block=k,
        state_every=cl.state_every, queued=cl.launcher == "slurm",
        simulator_gpus=served_simulator_gpus(cfg), how="this config")


def block_size(w: cost.Workload, lay: cost.Layout, inp: cost.Inputs, limit_s: float) -> int:
    """The most iterations a resident block fits in the job's time limit (at least 2)."""
    est = cost.estimate(w, replace(lay, block=w.iterations), inp)
    start, steady = cost.seconds(est.block_start), cost.seconds(est.iteration)
    return max(2, min(w.iterations, math.floor((limit_s - start) / steady)))


def layouts(cfg: DictConfig, w: cost.Workload, inp: cost.Inputs
            ) -> tuple[list[cost.Layout], list[str]]:
    """The config's layout, then the others it allows, each with the overrides that get
    it (resident blocks as long as the job's time limit allows); and notes on layouts
    it does not allow or not yet."""
    cl, own = cfg.cluster, config_layout(cfg)
    per_stage = replace(own, name=f"per stage, update {cl.nodes}x{cl.gpus_per_node}",
                        block=1, how="")
    one_node = ([replace(per_stage, name=f"per stage, update 1x{cl.gpus_per_node}",
                         update_gpus=cl.gpus_per_node, how="cluster.nodes=1")]
                if cl.nodes > 1 else [])
    out = [own] + ([replace(per_stage, how="cluster.iterations_per_job=1")]
                   if own.resident else []) + one_node
    notes = []
    if w.iterations < 2:
        notes.append("resident blocks: a run of one iteration has none")
    elif w.keep_state >= 1 and w.zero_stage <= 2:
        for base in ([] if own.resident else [per_stage]) + one_node:
            k = block_size(w, base, inp, cl.timeout_min * 60)
            how = " ".join(filter(None, [base.how, f"cluster.iterations_per_job={k}"]))
            out.append(replace(base, name=base.name.replace("per stage", f"resident blocks "
                                                            f"of {k}"), block=k, how=how))
    else:
        notes.append("resident blocks: need algorithm.keep_state_iterations >= 1 and "
                     "algorithm.zero_stage <= 2 (docs/update.md, \"Resident blocks\")")
    smallest = (one_node or [per_stage])[0]
    out.append(replace(smallest, name=f"{smallest.name}, state on node-local storage",
                       local_state=True, how="not implemented (docs/scale.md)"))
    return out, notes


def lora_layouts(cfg: DictConfig, w: cost.Workload, inp: cost.Inputs,
                 shape: Optional[dict[str, float]]
                 ) -> tuple[list[tuple[cost.Layout, cost.Workload]], list[str]]:
    """LoRA's layouts with their workloads, and notes. A LoRA config: its one GPU with
    vLLM asleep while DeepSpeed trains. A full-weight config: the same run with LoRA
    adapters of lora.yaml's rank on every projection (`model/lora=r64`), per stage and in
    resident blocks on the fewest GPUs it allows, and on that one GPU."""
    cl = cfg.cluster
    notes: list[str] = []
    if w.lora:
        wl, prefix, over = w, "", ""
    elif cfg.algorithm.zero_stage > 2:
        return [], ["LoRA adapters: need algorithm.zero_stage <= 2"]
    elif shape is None:
        return [], [f"LoRA adapters: no shape of {cfg.model.name!r} to size them (set "
                    "model.source to the model's directory)"]
    else:
        rank = int(inp["lora_rank"])
        from rlver.config_checks import LORA_TARGETS

        wl = replace(w, adapter_params=cost.adapter_params(rank, LORA_TARGETS, shape))
        prefix, over = f"LoRA r{rank}, ", "model/lora=r64"
        notes.append(f"LoRA r{rank}: trains an adapter on the frozen base instead of every "
                     "weight: another run (docs/update.md, \"LoRA policies\")")
    out: list[tuple[cost.Layout, cost.Workload]] = []
    nodes = "cluster.nodes=1" if cl.nodes > 1 else ""
    smallest = replace(config_layout(cfg), name=f"per stage, update 1x{cl.gpus_per_node}",
                       update_gpus=cl.gpus_per_node, block=1)
    if not w.lora:
        out.append((replace(smallest, name=prefix + smallest.name,
                            how=" ".join(filter(None, [over, nodes]))), wl))
    if w.iterations < 2 or w.keep_state < 1:
        return out, notes
    if not w.lora:
        k = block_size(wl, smallest, inp, cl.timeout_min * 60)
        out.append((replace(smallest, name=f"{prefix}resident blocks of {k}, update "
                            f"1x{cl.gpus_per_node}", block=k, how=" ".join(filter(
                                None, [over, nodes, f"cluster.iterations_per_job={k}"]))), wl))
    one = replace(smallest, update_gpus=1, engine_sleeps=True)
    k = block_size(wl, one, inp, cl.timeout_min * 60)
    out.append((replace(one, name=f"{prefix}resident blocks of {k}, 1 GPU, vLLM sleeps",
                        block=k,
                        how="not implemented (vLLM's sleep mode; docs/scale.md)"), wl))
    return out, notes


def make_budget(cfg: DictConfig) -> Budget:
    """The budget of a composed config (one whose update trains on GPUs)."""
    if cfg.cluster.gpus_per_node == 0:
        raise RlverInputError(
            f"config (experiment={cfg.experiment}): cluster.gpus_per_node is 0: the update "
            "trains on CPUs, and rlver budget prices GPU jobs (docs/performance.md times CPU "
            "runs). Fix: budget a GPU layout: a paper_* experiment, or cluster=slurm, or "
            "cluster.gpus_per_node=N."
        )
    params, where = parameters(cfg)
    shape = model_shape(cfg)
    inp = cost.load_inputs()
    w = workload(cfg, params, adapter_params(cfg, shape))
    lays, notes = layouts(cfg, w, inp)
    lora, lora_notes = lora_layouts(cfg, w, inp, shape)
    lora_text = (f"; LoRA rank {cfg.model.lora.rank} ({w.adapter_params:.3g} adapter "
                 "parameters a model)" if w.lora else "")
    describe = (
        f"{cfg.algorithm.name.upper()}, {cfg.template.name}, {cfg.model.name}: "
        f"{params:.3g} parameters ({where}), {cfg.model.dtype}{lora_text}; {w.iterations} "
        f"iterations of {w.dialogues} dialogues x {w.turns} turns x {w.reply_tokens} tokens; "
        f"{w.evaluations} evaluations of {w.eval_dialogues} dialogues x {w.eval_turns} turns")
    estimates = ([cost.estimate(w, lay, inp) for lay in lays]
                 + [cost.estimate(wl, lay, inp) for lay, wl in lora])
    return Budget(cfg.run, describe, w, estimates, notes + lora_notes, cost.disk(w, inp), inp)


def stage_rows(est: cost.Estimate) -> list[tuple[str, str, float, float, float, float]]:
    """(stage, GPUs, wall s an iteration, GPU-h an iteration, job hours of the run, GPU-h
    of the run) by stage; an evaluation is not part of an iteration."""
    rows = []
    per_iter, evaluation = est.per_iteration(), est.evaluation
    for stage in STAGES:
        mine = [i for i in per_iter if i.stage == stage]
        ev = [i for i in evaluation if i.stage == stage]
        gpus = "+".join(str(est.gpus[j]) for j in sorted({i.job for i in mine or ev}))
        s, gpu_s = cost.seconds(mine), est.gpu_s(mine)
        run_s = est.iterations * s + est.evaluations * cost.seconds(ev)
        run_gpu_s = est.iterations * gpu_s + est.evaluations * est.gpu_s(ev)
        if stage == "simulated user" and est.layout.simulator_gpus:
            gpus += f" +{est.layout.simulator_gpus} served"
            gpu_s += est.layout.simulator_gpus * cost.seconds(per_iter)
            run_gpu_s += est.layout.simulator_gpus * est.wall_s_run()
        rows.append((stage, gpus, s, gpu_s / 3600, run_s / 3600, run_gpu_s / 3600))
    return rows


def to_text(b: Budget) -> str:
    """The tables `rlver budget` prints."""
    est, w = b.own, b.workload
    lay = est.layout
    sim = (f"served on {lay.simulator_gpus} GPUs" if lay.simulator_gpus
           else "an endpoint of yours (its GPUs not priced)")
    lines = [f"rlver budget: run {b.run}: {b.describe}",
             f"layout: {lay.name}; rollout {lay.shards} shard(s) x {lay.rollout_gpus} GPU, "
             f"evaluation {lay.evaluate_gpus} GPU; the simulated user: {sim}", "",
             f"{'stage':<16}{'GPUs':>12}{'s/iter':>10}{'GPU-h/iter':>12}{'job h/run':>11}"
             f"{'GPU-h/run':>11}"]
    for stage, gpus, s, gh, rh, rgh in stage_rows(est):
        first = "-" if stage == "evaluation" else f"{s:.1f}"
        per = "-" if stage == "evaluation" else f"{gh:.2f}"
        lines.append(f"{stage:<16}{gpus:>12}{first:>10}{per:>12}{rh:>11.1f}{rgh:>11.0f}")
    wall = cost.seconds(est.per_iteration())
    lines.append(f"{'total':<16}{'':>12}{wall:>10.1f}{est.gpu_h_per_iteration():>12.2f}"
                 f"{'':>11}{est.gpu_h_run():>11.0f}")
    one_eval = cost.seconds(est.evaluation)
    lines += [
        f"an evaluation: {one_eval:.1f} s ({w.evaluations} in the run)"
        + ("" if lay.resident else "; it runs beside the next iteration's jobs"),
        f"wall time: {wall:.1f} s an iteration, {est.wall_s_run() / 3600:.0f} h the run",
        f"fixed costs: {est.fixed_share():.2f} of an iteration's wall time (job starts, "
        "engine and DeepSpeed starts, weights and optimizer state read and written)", "",
        f"{'disk':<20}{'peak GB':>10}{'end GB':>10}"]
    lines += [f"{name:<20}{peak / GB:>10.0f}{end / GB:>10.0f}" for name, peak, end in b.disk.rows]
    lines += [f"{'total':<20}{b.disk.peak / GB:>10.0f}{b.disk.end / GB:>10.0f}", "",
              f"{'layout':<56}{'GPU-h/run':>10}{'wall h/run':>11}{'fixed':>7}"
              f"{'GB/GPU':>8}  how"]
    for e in b.estimates:
        memory = cost.update_memory_per_gpu(e.workload, b.inputs, e.layout.update_gpus) / GB
        lines.append(f"{e.layout.name:<56}{e.gpu_h_run():>10.0f}{e.wall_s_run() / 3600:>11.0f}"
                     f"{e.fixed_share():>7.2f}{memory:>8.1f}  {e.layout.how}")
    lines += [f"  {note}" for note in b.notes]
    lines.append("GB/GPU: each update rank's weights, gradients and optimizer state under "
                 f"ZeRO-{w.zero_stage}, and a LoRA model's frozen base (activations on top; "
                 f"{b.inputs['gpu_memory_bytes'] / GB:.0f} GB GPUs)")
    lines += ["", summary_line(b)]
    return "\n".join(lines) + "\n"


def items_text(est: cost.Estimate) -> str:
    """Every cost of an iteration (and of an evaluation), in seconds: docs/scale.md's
    breakdown."""
    lines = [f"{est.layout.name}: seconds per iteration"]
    lines += [f"  {i.stage}: {i.label} ({i.kind}) {i.seconds:.1f}" for i in est.per_iteration()]
    lines += [f"  an evaluation: {i.stage}: {i.label} ({i.kind}) {i.seconds:.1f}"
              for i in est.evaluation]
    return "\n".join(lines) + "\n"


def inputs_text(inp: cost.Inputs) -> str:
    """The model's inputs, each with its value and source (rlver/data/cost/)."""
    return "".join(f"{name}: {inp[name]:.4g} ({inp.sources[name]})\n"
                   for name in inp.values)


def to_json(b: Budget) -> dict[str, Any]:
    """The budget as one JSON object."""
    return {
        "run": b.run, "workload": dataclasses.asdict(b.workload),
        "layouts": [{"name": e.layout.name, "how": e.layout.how,
                     "adapter_params": e.workload.adapter_params,
                     "gpu_hours_run": e.gpu_h_run(), "wall_hours_run": e.wall_s_run() / 3600,
                     "gpu_hours_per_iteration": e.gpu_h_per_iteration(),
                     "wall_s_per_iteration": cost.seconds(e.per_iteration()),
                     "fixed_share": e.fixed_share(),
                     "stages": {r[0]: {"gpus": r[1], "wall_s_per_iteration": r[2],
                                       "gpu_hours_per_iteration": r[3], "job_hours_run": r[4],
                                       "gpu_hours_run": r[5]} for r in stage_rows(e)}}
                    for e in b.estimates],
        "notes": b.notes,
        "disk_gb": {"peak": b.disk.peak / GB, "end": b.disk.end / GB,
                    **{name: {"peak": p / GB, "end": e / GB} for name, p, e in b.disk.rows}},
    }


def summary_line(b: Budget) -> str:
    """One line: the run's GPU-hours, wall time, disk, fixed-cost share and the cheapest
    layout it allows."""
    own = b.own
    # The same run only: a LoRA layout of a full-weight config trains another model.
    priced = [e for e in b.estimates if not e.layout.how.startswith("not implemented")
              and e.workload == b.workload]
    cheapest = min(priced, key=lambda e: e.gpu_h_run())
    cheaper = ("" if cheapest is own else
               f"; the cheapest layout it allows: {cheapest.layout.name}, "
               f"{_n(cheapest.gpu_h_run())} GPU-hours ({cheapest.layout.how})")
    return (f"rlver budget: run {b.run}: {_n(own.gpu_h_run())} GPU-hours, "
            f"{_n(own.wall_s_run() / 3600)} h of wall time ({own.layout.name}); disk "
            f"{b.disk.peak / GB:,.0f} GB at the peak, {b.disk.end / GB:,.0f} GB at the end; "
            f"fixed costs {own.fixed_share():.2f} of an iteration{cheaper}")


def _n(x: float) -> str:
    """Hours in the summary: whole ones, a decimal below 10."""
    return f"{x:,.0f}" if x >= 10 else f"{x:.1f}"


def budget_note(cfg: DictConfig) -> Optional[str]:
    """The summary line for `snakemake`, for a run that trains on GPUs; None otherwise.
    Never raises: a budget that cannot be made says why in the line."""
    if cfg.cluster.gpus_per_node == 0:
        return None
    try:
        return (f"{summary_line(make_budget(cfg))} (the tables: rlver budget --experiment "
                f"{cfg.experiment} with the run's overrides)")
    except Exception as exc:  # a note must never stop a run
        return f"rlver budget: not available for this run ({exc})"
