"""What a run costs before it starts: seconds, GPU-hours and bytes, by stage and layout.

Pure functions over plain numbers (`load_inputs` reads them from the package's data).
Every job pays fixed costs (its Slurm start, process
start and imports, the engine's or DeepSpeed's start, reading and writing weights and
optimizer state) and does work (decoding, waiting for the simulated user, training). The
fixed parts that do not grow with the model are measured on this machine by
`bench/scale.py` (rlver/data/cost/measured.yaml, which it writes); bytes move at the
stated storage bandwidths and work runs at the stated GPU rates
(rlver/data/cost/stated.yaml, each figure with its source). A LoRA policy (model.lora)
trains an adapter on the frozen base: its optimizer state and its exports are the
adapter's, at the same bytes a parameter as full weights', and the same measured fixed
parts (the same save_checkpoint, load_checkpoint and safetensors writes, fewer bytes);
what LoRA changes besides (training and decoding rates, the adapter's hand-over to a
running engine, vLLM's sleep) is rlver/data/cost/lora.yaml. docs/scale.md explains the
model; `rlver budget` (rlver/budget.py) prices a composed config with it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any

import yaml


@dataclass(frozen=True)
class Inputs:
    """The model's figures by name, and where each comes from."""

    values: dict[str, float]
    sources: dict[str, str]

    def __getitem__(self, name: str) -> float:
        return self.values[name]

    def fixed(self, fit: str) -> float:
        """The fixed part of a measured cost (a fit's intercept; a negative one is below
        what the measurements resolve, taken as 0)."""
        return max(0.0, self.values[f"{fit}.intercept_s"])


def read_data(name: str) -> dict[str, Any]:
    """One file of rlver/data/cost/ as a mapping."""
    text = resources.files("rlver.data").joinpath("cost").joinpath(name).read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    assert isinstance(data, dict), f"rlver/data/cost/{name}: not a mapping"
    return data


def load_inputs() -> Inputs:
    """stated.yaml's and lora.yaml's figures and measured.yaml's fits
    (`<fit>.intercept_s`, `<fit>.slope_s`) and constants, with their sources."""
    values: dict[str, float] = {}
    sources: dict[str, str] = {}
    for name, entry in [*read_data("stated.yaml").items(), *read_data("lora.yaml").items()]:
        values[name], sources[name] = float(entry["value"]), entry["source"]
    measured = read_data("measured.yaml")
    where = f"{measured['command']} ({measured['date']})"
    for fit, v in measured["fits"].items():
        for key in ("intercept_s", "slope_s"):
            values[f"{fit}.{key}"] = float(v[key])
            sources[f"{fit}.{key}"] = f"measured: {where}, fit of {v['per']} ({v['how']})"
    for name, entry in measured["constants"].items():
        values[name] = float(entry["value"])
        sources[name] = f"measured: {entry['source']}"
    return Inputs(values, sources)


@dataclass(frozen=True)
class Workload:
    """What a run computes (from its config): the same under every layout."""

    params: float
    #: Bytes a parameter of a policy folder (2 for bfloat16, 4 for float32).
    policy_bytes_per_param: float
    #: Trained models: 1 (GRPO), 2 (PPO: the actor and its critic).
    models: int
    #: `bf16` or `fp32`: the update's weights, gradients and optimizer bytes.
    precision: str
    zero_stage: int
    dialogues: int
    turns: int
    reply_tokens: int
    #: think-then-say: each turn is its own trained row, with the context before it.
    think: bool
    epochs: int
    iterations: int
    evaluations: int
    eval_dialogues: int
    eval_turns: int
    eval_reply_tokens: int
    #: algorithm.keep_state_iterations: optimizer states kept on disk (0: none carried).
    keep_state: int
    #: Policy folders kept at the end (iteration 0's are links to the base model).
    kept_policies: int
    #: LoRA (model.lora): the adapter's parameters (0: every weight is trained).
    adapter_params: float = 0.0
    #: With LoRA, PPO's critic trains every weight of its backbone (model.lora.critic: full).
    full_critic: bool = False

    @property
    def lora(self) -> bool:
        return self.adapter_params > 0


#: What each LoRA target projection maps, as (in, out) by the model's shape's names.
LORA_PROJECTIONS = {"q_proj": ("hidden", "q_dim"), "k_proj": ("hidden", "kv_dim"),
                    "v_proj": ("hidden", "kv_dim"), "o_proj": ("q_dim", "hidden"),
                    "gate_proj": ("hidden", "intermediate"),
                    "up_proj": ("hidden", "intermediate"),
                    "down_proj": ("intermediate", "hidden")}


def adapter_params(rank: int, targets: Sequence[str], shape: Mapping[str, float]) -> float:
    """A LoRA adapter's parameters: rank x (in + out) of each targeted projection, in
    every layer (`shape`: hidden, q_dim, kv_dim, intermediate, layers)."""
    per_layer = sum(shape[i] + shape[o] for i, o in (LORA_PROJECTIONS[t] for t in targets))
    return rank * per_layer * shape["layers"]


@dataclass(frozen=True)
class Layout:
    """Where and how the jobs run: the same results, other costs."""

    name: str
    update_gpus: int
    rollout_gpus: int
    evaluate_gpus: int
    shards: int
    #: Iterations a job runs (cluster.iterations_per_job); 1: a job per stage.
    block: int = 1
    #: In a block, the state is also saved every this many updates (0: at its end only).
    state_every: int = 0
    #: Optimizer state read and written on node-local storage instead of the shared one.
    local_state: bool = False
    #: Jobs wait for a scheduler (Slurm) and the update for submitit's submission.
    queued: bool = True
    #: GPUs of a simulated user served for the run (0: an endpoint not priced here).
    simulator_gpus: int = 0
    #: How to get it: config overrides, or why it is not available.
    how: str = ""
    #: In a block on the update's GPU, the rollout engine sleeps (its weights in CPU
    #: memory) while DeepSpeed trains, and wakes for the next rollout.
    engine_sleeps: bool = False

    @property
    def resident(self) -> bool:
        return self.block > 1


@dataclass(frozen=True)
class Item:
    """A cost: `seconds` of `stage` (rollout, simulated user, update, evaluation) in
    `job`, of `kind` queue (no GPU held), fixed or work."""

    stage: str
    label: str
    seconds: float
    kind: str
    job: str


@dataclass(frozen=True)
class Estimate:
    """The run under one layout: the items of an iteration and of an evaluation, and the
    totals over the run."""

    layout: Layout
    workload: Workload
    iterations: int
    evaluations: int
    #: An iteration's items (in a block: those every iteration pays).
    iteration: list[Item]
    #: One evaluation's items (in a block: the wall time it adds to its iteration).
    evaluation: list[Item]
    #: GPUs each job holds while it runs.
    gpus: dict[str, int]
    #: A resident block's start, paid once a block.
    block_start: list[Item] = field(default_factory=list)

    def per_iteration(self) -> list[Item]:
        """An iteration's items, with a block's start spread over its iterations."""
        blocks = math.ceil(self.iterations / self.layout.block)
        return [replace(i, seconds=i.seconds * blocks / self.iterations)
                for i in self.block_start] + self.iteration

    def gpu_s(self, items: list[Item]) -> float:
        """GPU-seconds of `items`: each job's GPUs, held while it runs (not in a queue)."""
        return sum(i.seconds * self.gpus[i.job] for i in items if i.kind != "queue")

    def fixed_share(self) -> float:
        """The share of an iteration's wall time that is not work."""
        items = self.per_iteration()
        return sum(i.seconds for i in items if i.kind != "work") / seconds(items)

    def wall_s_run(self) -> float:
        """Iterations one after another. Per stage, an evaluation runs beside the next
        iteration's jobs, so only the last one adds wall time; in a block every one adds
        what it outlasts of its iteration's rollouts."""
        evaluations = self.evaluations if self.layout.resident else 1
        return (self.iterations * seconds(self.per_iteration())
                + evaluations * seconds(self.evaluation))

    def gpu_h_per_iteration(self) -> float:
        """GPU-hours of an iteration, a served simulated user's GPUs included."""
        wall = seconds(self.per_iteration())
        return (self.gpu_s(self.per_iteration()) + self.layout.simulator_gpus * wall) / 3600

    def gpu_h_run(self) -> float:
        """GPU-hours of the run: its iterations, its evaluations, and a served simulated
        user's GPUs for the whole wall time."""
        return (self.iterations * self.gpu_s(self.per_iteration())
                + self.evaluations * self.gpu_s(self.evaluation)
                + self.layout.simulator_gpus * self.wall_s_run()) / 3600


def seconds(items: list[Item]) -> float:
    """Wall seconds of items run one after another."""
    return sum(i.seconds for i in items)


def stored_tokens(w: Workload, inp: Inputs, turns: int, reply: int) -> float:
    """Tokens of a dialogue's trajectory rows: the context after the last turn, or with
    think-then-say one row per turn, each with the context before it."""
    per_turn = reply + inp["user_tokens_per_turn"]
    system = inp["system_tokens"]
    if not w.think:
        return system + turns * per_turn
    return turns * system + per_turn * turns * (turns + 1) / 2


def zero_bytes(precision: str, inp: Inputs) -> tuple[float, float, float]:
    """Bytes a parameter in the update: (weights, gradients, optimizer)."""
    return (inp[f"{precision}_weight_bytes"], inp[f"{precision}_gradient_bytes"],
            inp[f"{precision}_optimizer_bytes"])


def trained_params(w: Workload) -> list[float]:
    """Parameters each trained model trains: the actor's, then PPO's critic's (under LoRA
    their adapters, or the critic's every weight with model.lora.critic: full)."""
    actor = w.adapter_params if w.lora else w.params
    critic = w.params if w.full_critic or not w.lora else w.adapter_params
    return [actor, critic][:w.models]


def exported_bytes(w: Workload, inp: Inputs) -> list[float]:
    """Bytes each trained model exports an iteration: a policy folder at the model's
    dtype, or an adapter at the update's weight bytes."""
    weights = zero_bytes(w.precision, inp)[0]
    return [w.policy_bytes_per_param * t if t == w.params else weights * t
            for t in trained_params(w)]


def state_bytes(w: Workload, inp: Inputs) -> list[float]:
    """Each model's optimizer-state checkpoint: its trained weights and the optimizer's
    bytes (a frozen base has none)."""
    weights, _, optimizer = zero_bytes(w.precision, inp)
    return [(weights + optimizer) * t for t in trained_params(w)]


def update_memory_per_gpu(w: Workload, inp: Inputs, gpus: int) -> float:
    """Bytes each rank holds for the models' weights, gradients and optimizer under ZeRO
    (activations come on top): gradients partitioned from stage 2, the optimizer from
    stage 1, the weights at stage 3; a LoRA model's frozen base besides, whole below
    stage 3."""
    weights, grads, opt = zero_bytes(w.precision, inp)
    z = w.zero_stage
    per_param = (weights / (gpus if z >= 3 else 1) + grads / (gpus if z >= 2 else 1)
                 + opt / (gpus if z >= 1 else 1))
    frozen = [w.params if t != w.params else 0.0 for t in trained_params(w)]
    return (per_param * sum(trained_params(w))
            + weights / (gpus if z >= 3 else 1) * sum(frozen))


def _gb(x: float) -> str:
    return f"{x / 1e9:.0f}" if x >= 10e9 else f"{x / 1e9:.2g}"


def _engine_start(inp: Inputs, policy_bytes: float, job: str, stage: str,
                  lora: bool) -> list[Item]:
    """A fresh vLLM engine in a new process: imports, init, the cached compile, the
    policy (under LoRA the base and the adapter) read from the shared file system."""
    fs = inp["shared_fs_bytes_per_s"]
    read = "base and adapter read" if lora else "policy read"
    return [
        Item(stage, "process start + imports", inp.fixed("vllm process start + imports"),
             "fixed", job),
        Item(stage, "vLLM init (profile, KV cache, CUDA graphs)", inp["vllm_init_s"],
             "fixed", job),
        Item(stage, "torch.compile (cache hit)", inp["vllm_compile_warm_s"], "fixed", job),
        Item(stage, f"{read} ({policy_bytes / 1e9:.1f} GB)", policy_bytes / fs, "fixed", job),
    ]


def _dialogues(inp: Inputs, turns: int, reply: int, job: str, stage: str,
               lora: bool) -> list[Item]:
    """A dialogue's turns one after another (an adapter's kernels add to each token) and
    the simulated user's answers."""
    per_token = inp["decode_s_per_token"] + (inp["lora_decode_extra_s_per_token"] if lora
                                             else 0.0)
    return [Item(stage, "generate", turns * reply * per_token, "work", job),
            Item("simulated user", "answers", turns * inp["simulator_s_per_turn"], "work",
                 job)]


def estimate(w: Workload, lay: Layout, inp: Inputs) -> Estimate:
    """The costs of the run `w` under layout `lay`: a job per stage, or resident blocks."""
    p, m = w.params, w.models
    fs = inp["shared_fs_bytes_per_s"]
    state_bw = inp["local_nvme_bytes_per_s"] if lay.local_state else fs
    base, exports, states = w.policy_bytes_per_param * p, exported_bytes(w, inp), state_bytes(
        w, inp)
    # An engine reads the policy, or the base and the iteration's adapter.
    read = base + (exports[0] if w.lora else 0.0)
    # Each model's folder: the base, and the model's adapter if it has one.
    loads = [base + (e if t != p else 0.0) for t, e in zip(trained_params(w), exports,
                                                           strict=True)]
    rate = sum(1.0 if t == p else inp["lora_train_time_factor"] for t in trained_params(w))
    trained = w.dialogues * stored_tokens(w, inp, w.turns, w.reply_tokens)
    train_s = (6 * p * trained * w.epochs * rate
               / (inp["train_flops_per_gpu_s"] * lay.update_gpus))
    queue = inp["slurm_queue_s"] if lay.queued else 0.0
    start = [
        Item("update", "Slurm queue + submitit", queue + inp["submitit_submit_to_start_s"],
             "queue", "update"),
        Item("update", "process start + imports",
             inp.fixed("update process start + imports"), "fixed", "update"),
        Item("update", "policy load", sum(loads) / fs + m * inp.fixed("policy load"),
             "fixed", "update"),
        Item("update", "DeepSpeed init", m * (inp.fixed("DeepSpeed init") + inp[
            "DeepSpeed init.slope_s"] * p / lay.update_gpus), "fixed", "update")]
    each = (f"{_gb(states[0])} GB a model" if len(set(states)) == 1
            else " + ".join(f"{_gb(s)}" for s in states) + " GB")
    load = Item("update", f"state load ({each})",
                sum(states) / state_bw + m * inp.fixed("state load"), "fixed", "update")
    save = Item("update", "state save", sum(states) / state_bw + m * inp.fixed("state save"),
                "fixed", "update")
    work = [*_dialogues(inp, w.turns, w.reply_tokens, "rollout", "rollout", w.lora),
            Item("update", "train", train_s, "work", "update")]
    eval_work = _dialogues(inp, w.eval_turns, w.eval_reply_tokens, "evaluate", "evaluation",
                           w.lora)
    if lay.resident:
        return _resident(w, lay, inp, start + [load], save, work, eval_work)
    export = Item("update", ("adapter" if w.lora else "policy") + " export (+ critic for PPO)",
                  sum(exports) / fs + inp.fixed("policy export"), "fixed", "update")
    update = start + ([load, save] if w.keep_state > 0 else []) + [export]
    iteration = [Item("rollout", "Slurm queue", queue, "queue", "rollout"),
                 *_engine_start(inp, read, "rollout", "rollout", w.lora), *update, *work]
    evaluation = [Item("evaluation", "Slurm queue", queue, "queue", "evaluate"),
                  *_engine_start(inp, read, "evaluate", "evaluation", w.lora), *eval_work]
    gpus = {"rollout": lay.rollout_gpus * lay.shards, "update": lay.update_gpus,
            "evaluate": lay.evaluate_gpus}
    return Estimate(lay, w, w.iterations, w.evaluations, iteration, evaluation, gpus)


def _resident(w: Workload, lay: Layout, inp: Inputs, update_start: list[Item], save: Item,
              work: list[Item], eval_work: list[Item]) -> Estimate:
    """One job holds the update's GPUs for the rollouts, updates and evaluations of a
    block: the engines start once a block, each iteration hands the rollout engine the new
    weights (under LoRA the adapter; where the engine sleeps in training, it also sleeps
    and wakes), the state is saved at the block's end (and every state_every updates), and
    only kept policies are exported."""
    fs = inp["shared_fs_bytes_per_s"]
    base, policy = w.policy_bytes_per_param * w.params, exported_bytes(w, inp)[0]
    read = base + (policy if w.lora else 0.0)
    saves = 1 + ((lay.block - 1) // lay.state_every if lay.state_every else 0)
    blocks = math.ceil(w.iterations / lay.block)
    kept = min(1.0, (w.evaluations + blocks) / w.iterations)

    def block(items: list[Item]) -> list[Item]:
        return [replace(i, job="block") for i in items]

    sync = (Item("rollout", "adapter to the engine", inp["lora_adapter_sync_s"], "fixed",
                 "block") if w.lora else
            Item("rollout", "weight sync to the engine", inp["weight_sync_s"], "fixed",
                 "block"))
    sleep = ([Item("rollout", "vLLM sleep and wake", inp["vllm_sleep_wake_s"], "fixed",
                   "block")] if lay.engine_sleeps else [])
    iteration = block([
        sync, *sleep,
        replace(save, label=f"state save ({saves} a block)",
                seconds=save.seconds * saves / lay.block),
        Item("update", ("adapter" if w.lora else "policy") + " export (kept policies)",
             kept * (policy / fs + inp.fixed("policy export")), "fixed", "block"),
        *work])
    block_start = block([*update_start, *_engine_start(inp, read, "block", "rollout",
                                                        w.lora)])
    # A rank takes the evaluation beside the shards when the block has more ranks than
    # shards: the evaluation adds what outlasts them.
    beside = lay.update_gpus > lay.shards
    rollout_s = seconds([i for i in work if i.job == "rollout"])
    extra = max(0.0, seconds(eval_work) - (rollout_s if beside else 0.0))
    evaluation = [Item("evaluation", "dialogues beyond the shards'" if beside else "dialogues",
                       extra, "work", "block")]
    return Estimate(lay, w, w.iterations, w.evaluations, iteration, evaluation,
                    {"block": lay.update_gpus}, block_start)


@dataclass(frozen=True)
class Disk:
    """Bytes on disk by kind: at the run's peak and at its end."""

    rows: list[tuple[str, float, float]]

    @property
    def peak(self) -> float:
        return sum(r[1] for r in self.rows)

    @property
    def end(self) -> float:
        return sum(r[2] for r in self.rows)


def disk(w: Workload, inp: Inputs) -> Disk:
    """The run's files: the base model (resources/models/; iteration 0's policy is hard
    links to it), kept policies (under LoRA adapters; two more while an iteration's is in
    use and the next is written), the carried optimizer state (one more while an update
    writes the next; the last update writes none), the rollouts and the evaluations'
    dialogues."""
    base = w.policy_bytes_per_param * w.params
    exports = exported_bytes(w, inp)
    policy = exports[0]
    state_dir = sum(state_bytes(w, inp)) + sum(exports[1:])  # + PPO's critic
    per_token = inp["stored_bytes_per_token"]
    rollouts = (w.iterations * w.dialogues * per_token
                * stored_tokens(w, inp, w.turns, w.reply_tokens))
    evals = (w.evaluations * w.eval_dialogues * per_token
             * stored_tokens(w, inp, w.eval_turns, w.eval_reply_tokens))
    kept = (w.kept_policies - 1) * policy
    states_peak = (w.keep_state + 1) * state_dir if w.keep_state else 0.0
    states_end = max(0, w.keep_state - 1) * state_dir
    return Disk([
        ("base model", base, base),
        ("kept policies", kept + 2 * policy, kept),
        ("optimizer state", states_peak, states_end),
        ("rollouts", rollouts, rollouts),
        ("evaluations", evals, evals),
    ])
