"""What the config refuses before anything runs, for the paper's lengths and the trainer's
sake: a dialogue longer than the policy engine's context (rlver/context.py), sampling the
trainer cannot follow, and the mismatch choices (rlver/train/mismatch.py)."""

from __future__ import annotations

import pytest

from rlver import config, context
from rlver.config_schema import TemplateConfig
from rlver.errors import RlverInputError


def test_worst_case_by_hand():
    # 50 system + 32 template + 3 turns x (100 reply + 20 user + 24 template)
    assert context.worst_case(50, 3, 100, 20) == 50 + 32 + 3 * 144


def test_a_dialogue_longer_than_the_context_is_refused_with_its_numbers():
    """The benchmark's 10 turns of 512-token replies (the paper's evaluation) do not fit
    the default 4096 tokens: refused when the config is composed, with the sum."""
    # The system prompt in the model's tokens where it is prepared here, else its bytes.
    system, how = context.system_tokens(config.compose("smoke"))
    need = system + 32 + 10 * (512 + 128 + 24)
    with pytest.raises(RlverInputError) as err:
        config.compose("smoke", ["evaluation.max_turns=10", "evaluation.max_new_tokens=512"])
    message = str(err.value)
    assert "rollout.max_model_len=4096 is too short" in message
    assert (f"the longest dialogue of the benchmark needs {need} tokens: system prompt "
            f"{system} ({how}) + template 32 + "
            "evaluation.max_turns=10 x (evaluation.max_new_tokens=512 + "
            "simulator.max_user_tokens=128 + template 24)") in message
    assert f"Fix: set rollout.max_model_len to at least {need}" in message
    assert "training" not in message  # smoke's 4 turns of 48 tokens fit
    cfg = config.compose("smoke", ["evaluation.max_turns=10", "evaluation.max_new_tokens=512",
                                   f"rollout.max_model_len={need}"])
    assert cfg.rollout.max_model_len == need
    with pytest.raises(RlverInputError, match="longest dialogue of training needs"):
        config.compose("smoke", ["simulator.max_turns=40", "rollout.max_new_tokens=128"])


def test_the_system_prompt_is_measured_with_the_models_tokenizer(base_model):
    """Where the model is on this machine: its tokenizer counts the system prompt (fewer
    tokens than bytes), and a context beyond the model's own is refused."""
    local = ["model=local_path", f"model.source={base_model}", "model.name=local"]
    cfg = config.compose("smoke", local)
    tokens, how = context.system_tokens(cfg)
    assert 10 < tokens < len(TemplateConfig().system_prompt.encode()) / 3
    assert how == f"measured with {base_model}"
    with pytest.raises(RlverInputError,
                       match=r"rollout.max_model_len=9000 exceeds the model's context "
                             r"\(max_position_embeddings=8192 in .*config.json\)"):
        config.compose("smoke", [*local, "rollout.max_model_len=9000"])


def test_every_paper_experiment_fits_its_context():
    """The paper's settings (8 training turns, the benchmark's 10, 512-token replies, an
    LLM simulator's 512-token messages) fit config/paper/training.yaml's context."""
    for name in sorted(p.stem for p in (config.CONFIG_DIR / "experiment").glob("paper_*")):
        cfg = config.compose(name, ["model.source=/models/Qwen2.5-7B-Instruct",
                                    "simulator.serve.model_path=/models/simulator",
                                    "retention=none"])
        system, _ = context.system_tokens(cfg)
        need = context.worst_case(system, cfg.evaluation.max_turns,
                                  cfg.evaluation.max_new_tokens, cfg.simulator.max_user_tokens)
        assert cfg.simulator.max_user_tokens == cfg.simulator.max_tokens == 512
        assert cfg.evaluation.max_turns == 10 and need <= cfg.rollout.max_model_len, name


def test_an_llm_simulators_messages_are_bounded_by_its_answer_cap():
    sim = ["simulator=llm_vllm", "simulator.model=/models/simulator"]
    assert config.compose("smoke", sim).simulator.max_user_tokens == 512
    cfg = config.compose("smoke", [*sim, "simulator.max_tokens=256"])
    assert cfg.simulator.max_user_tokens == 256
    assert config.compose("smoke").simulator.max_user_tokens == 128  # the heuristic


@pytest.mark.parametrize(("override", "message"), [
    ("rollout.temperature=0", "rollout.temperature must be positive (the trainer divides"),
    ("rollout.temperature=-1", "rollout.temperature must be positive (the trainer divides"),
    ("rollout.top_p=0.9", "rollout.top_p must be 1.0 (nucleus truncation would record"),
    ("+rollout.vllm_args.max_model_len=8192", "rollout.vllm_args must be without "
     "max_model_len"),
    ("algorithm.old_logprobs=engine", "algorithm.old_logprobs must be one of: rollout, "
     "recompute"),
    ("algorithm.rollout_is=is", "algorithm.rollout_is must be one of: none, tis"),
    ("algorithm.rollout_is=tis", "algorithm.rollout_is must be none with "
     "algorithm.old_logprobs=rollout"),
    ("algorithm.rollout_is_cap=0", "algorithm.rollout_is_cap must be positive"),
])
def test_settings_the_trainer_cannot_follow_are_refused_one_message_each(override, message):
    with pytest.raises(RlverInputError) as err:
        config.compose("smoke", [override])
    assert message in str(err.value)
    assert str(err.value).count(" must be ") == 1


def test_the_mismatch_choices_compose():
    cfg = config.compose("smoke", ["algorithm.old_logprobs=recompute",
                                   "algorithm.rollout_is=tis", "algorithm.rollout_is_cap=3"])
    alg = cfg.algorithm
    assert (alg.old_logprobs, alg.rollout_is, alg.rollout_is_cap) == ("recompute", "tis", 3.0)
    default = config.compose("smoke").algorithm
    assert (default.old_logprobs, default.rollout_is) == ("rollout", "none")
