"""Engines take a new policy in memory (`Engine.load_weights`): the hf engine here; the
vllm engine in test_engine_vllm.py, with the same checks."""

from __future__ import annotations

import pytest
import torch

from bench.support import old_and_new
from rlver import algorithms
from rlver.engines import Engine, SamplingSettings

PROMPT = [1, 9690, 198, 2683, 359, 253, 5356, 2, 198, 1, 4093, 198, 19556, 30]


def reply_logprobs(model: torch.nn.Module, prompt: list[int], reply: tuple[int, ...]
                   ) -> torch.Tensor:
    """The model's log-probs of `reply` after `prompt` (temperature 1)."""
    ids = torch.tensor([[*prompt, *reply]])
    with torch.no_grad():
        return algorithms.token_logprobs(model(ids).logits, ids)[0, len(prompt):]


def assert_engine_follows(engine: Engine, policy: torch.nn.Module, other: torch.nn.Module,
                          seed: int) -> None:
    """The engine's log-probs of what it samples are `policy`'s within the log-prob tests'
    tolerance (tests/test_rollout.py), and `other`'s by far not."""
    out = engine.generate([PROMPT], SamplingSettings(max_new_tokens=6), [seed])[0]
    got = torch.tensor(out.logprobs)
    mine = (got - reply_logprobs(policy, PROMPT, out.token_ids)).abs().max()
    theirs = (got - reply_logprobs(other, PROMPT, out.token_ids)).abs().max()
    assert len(out.token_ids) >= 4 and mine < 2e-3 and theirs > 0.1, (mine, theirs)


@pytest.fixture(scope="module")
def policies(base_model):
    return old_and_new(base_model)


def test_hf_engine_loads_weights_in_place(base_model, policies):
    from rlver.engines.hf import load_hf_engine

    old, new = policies
    engine = load_hf_engine(str(base_model), "float32")
    module = engine.model
    engine.load_weights(new.state_dict().items())  # with the tied lm_head.weight
    assert engine.model is module and module.lm_head.weight is module.get_input_embeddings().weight
    assert_engine_follows(engine, new, old, seed=1)
    engine.load_weights(old.named_parameters())
    assert_engine_follows(engine, old, new, seed=1)


def test_hf_engine_refuses_incomplete_weights(base_model, policies):
    from rlver.engines.hf import load_hf_engine

    engine = load_hf_engine(str(base_model), "float32")
    weights = dict(policies[1].named_parameters())
    weights.pop("model.norm.weight")
    weights["model.extra.weight"] = torch.zeros(2)
    with pytest.raises(ValueError, match=r"missing \['model.norm.weight'\].*"
                                         r"unknown \['model.extra.weight'\]"):
        engine.load_weights(weights.items())


def test_hf_engine_samples_our_settings_whatever_the_models_generation_config(
        base_model, tmp_path):
    """A model folder whose generation_config.json sets a repetition penalty, top_k and
    top_p (as Qwen2.5-7B-Instruct's does): the engine samples the tokens our settings
    give (those of the plain folder), sampled and greedy, and records the log-probs the
    trainer recomputes (rlver.algorithms.token_logprobs at the rollout temperature)."""
    import json

    from rlver.engines.hf import load_hf_engine
    from rlver.models import link_tree

    folder = tmp_path / "penalised"
    link_tree(base_model, folder)
    path = folder / "generation_config.json"
    penalties = {"do_sample": True, "temperature": 0.7, "repetition_penalty": 1.5,
                 "top_k": 20, "top_p": 0.8}
    gen = json.loads(path.read_text()) | penalties
    path.unlink()  # a hard link to the cached model's file
    path.write_text(json.dumps(gen))
    sampled, greedy = SamplingSettings(24, temperature=0.9), SamplingSettings(24, greedy=True)
    plain = load_hf_engine(str(base_model), "float32")
    engine = load_hf_engine(str(folder), "float32")
    for settings in (sampled, greedy):
        want = plain.generate([PROMPT, PROMPT], settings, [3, 4])
        got = engine.generate([PROMPT, PROMPT], settings, [3, 4])
        assert [s.token_ids for s in got] == [s.token_ids for s in want], settings
    for s in engine.generate([PROMPT, PROMPT], sampled, [3, 4]):
        ids = torch.tensor([[*PROMPT, *s.token_ids]])
        with torch.no_grad():
            logits = engine.model(ids).logits
        recomputed = algorithms.token_logprobs(logits, ids, 0.9)[0, len(PROMPT):]
        assert len(s.token_ids) > 4
        assert torch.allclose(torch.tensor(s.logprobs), recomputed, atol=2e-3)
