"""Ending a reply at its n-th sentence (`rollout.max_sentences`): where sentences end, and
the hf engine's stop, which keeps the sampled ids and log-probs exactly those of the
unstopped generation."""

from __future__ import annotations

import pytest

from rlver.engines import SamplingSettings
from rlver.engines.sentences import SentenceEnds


@pytest.fixture(scope="module")
def tokenizer(base_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_model)


def _ends(tokenizer, text: str) -> list[str]:
    """The text up to each sentence end found."""
    ids = tokenizer.encode(text)
    return [tokenizer.decode(ids[:n]) for n in SentenceEnds(tokenizer).lengths(ids)]


def test_sentence_ends(tokenizer):
    assert _ends(tokenizer, "I hear you. That sounds hard! What happened next?") == [
        "I hear you.", "I hear you. That sounds hard!",
        "I hear you. That sounds hard! What happened next?"]
    # A numbered list and a decimal are not sentence ends; an ellipsis and a closing
    # quote are.
    assert _ends(tokenizer, "Try this:\n1. Breathe for 3.5 minutes") == []
    assert _ends(tokenizer, "Hmm... I see") == ["Hmm..."]
    assert _ends(tokenizer, 'She said "enough." Then') == ['She said "enough."']
    # Punctuation before any letter ends nothing.
    assert _ends(tokenizer, "... ok") == []
    assert SentenceEnds(tokenizer).cut(tokenizer.encode("One. Two. Three."), 2) == len(
        tokenizer.encode("One. Two."))


@pytest.mark.parametrize("greedy", [False, True])
def test_hf_engine_stops_at_sentences_exactly(base_model, tokenizer, greedy):
    """A batch with `max_sentences` gives, row by row, a prefix of the same batch sampled
    without it (same ids and log-probs: the stop decides on sampled tokens only) that ends
    at its n-th sentence end, or the whole row where that comes later."""
    from rlver.chat import ChatTokens
    from rlver.engines.hf import load_hf_engine

    engine = load_hf_engine(str(base_model), "float32")
    chat = ChatTokens(tokenizer, "You are a kind listener. Reply in two short sentences.")
    prompts = [chat.start(u) for u in (
        "My sister stopped talking to me after the wedding.",
        "I failed my driving test again today.",
        "Work has been awful and I can't sleep.",
        "My dog is sick and the vet bills are huge.")]
    seeds = [11, 12, 13, 14]
    free = engine.generate(prompts, SamplingSettings(40, 0.8, greedy=greedy), seeds)
    sentences = SentenceEnds(tokenizer)
    for n in (1, 2):
        stopped = engine.generate(
            prompts, SamplingSettings(40, 0.8, greedy=greedy, max_sentences=n), seeds)
        for f, s in zip(free, stopped, strict=True):
            assert f.token_ids[:len(s.token_ids)] == s.token_ids
            assert f.logprobs[:len(s.logprobs)] == s.logprobs
            at = sentences.cut(f.token_ids, n)
            if at is not None and not (f.finished and at == len(f.token_ids)):
                assert s.stopped and not s.finished and not s.cut
                assert len(s.token_ids) == at
            else:
                assert s == f and not s.stopped
    assert sum(s.stopped for s in stopped) >= 2  # the stop is exercised
