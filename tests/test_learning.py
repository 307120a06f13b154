"""GRPO and PPO learn on CPU: a verifiable reward that SmolLM2 picks up in a few updates.

The user opens with "Hi, I'm <name>. ..." and the reward is 1 when the one-turn reply
says the name, else 0 (about a third of the base model's replies do). Rollouts are real
(the HF engine samples the policy, token ids and log-probs go to trajectory files); each
update is the real stage: submitit, DeepSpeed, the optimizer state and (PPO) the critic
carried from one update to the next, retention deleting the older state.
"""

from __future__ import annotations

import pytest

from rlver import config
from rlver.chat import ChatTokens
from rlver.engines import SamplingSettings, make_engine
from rlver.io import weights_sha256
from rlver.schema import write_trajectories
from rlver.train import UpdateSpec, run_update

pytestmark = pytest.mark.slow

NAMES = ["Maya", "Oskar", "Priya", "Tomas", "Lena", "Kofi"]
OPENING = "Hi, I'm {}. I had a rough day."
ITERATIONS = 2
COMMON = [f"iterations={ITERATIONS}", "algorithm.warmup_ratio=0", "algorithm.mini_batches=2",
          "algorithm.micro_batch_size=8", "cluster.cpus_per_task=2"]


def name_rollouts(run, cfg, iteration: int, samples: int = 4) -> tuple[list[str], float]:
    """Sample iteration `iteration`'s policy on every name; write the rollout file; return
    (its path, the mean reward)."""
    policy = run / f"iter_{iteration:04d}" / "policy"
    engine = make_engine("hf", str(policy), "float32")
    chat = ChatTokens(engine.tokenizer, cfg.template.system_prompt)
    names = [n for n in NAMES for _ in range(samples)]
    prompts = [chat.start(OPENING.format(n)) for n in names]
    out = engine.generate(prompts, SamplingSettings(max_new_tokens=12),
                          seeds=[1000 * iteration + k for k in range(len(prompts))])
    rows = []
    for k, (name, prompt, s) in enumerate(zip(names, prompts, out, strict=True)):
        reply = engine.tokenizer.decode(s.token_ids, skip_special_tokens=True)
        reward = float(name.lower() in reply.lower())
        rows.append({
            "iteration": iteration, "shard": 0, "dialogue": k, "sample": 0, "persona_id": name,
            "group_id": f"{iteration}-{name}", "seed": 1000 * iteration + k,
            "messages": [{"role": "user", "content": OPENING.format(name)},
                         {"role": "assistant", "content": reply}],
            "input_ids": prompt + list(s.token_ids),
            "loss_mask": [0] * len(prompt) + [1] * len(s.token_ids),
            "logprobs": [0.0] * len(prompt) + list(s.logprobs),
            "emotion_start": 0, "emotion": [int(100 * reward)], "delta": [int(100 * reward)],
            "reason": ["said the name" if reward else "did not say the name"],
            "parse_error": [False], "truncated": [False], "num_turns": 1, "outcome": "max_turns",
            "final_emotion": int(100 * reward), "reward": reward, "seconds": 0.0,
        })
    path = run / f"iter_{iteration:04d}" / "rollouts" / "shard_000.parquet"
    write_trajectories(path, rows, config_hash=config.config_hash(cfg),
                       policy_sha256=weights_sha256(policy), kind="rollout")
    return [str(path)], sum(r["reward"] for r in rows) / len(rows)


@pytest.mark.parametrize("overrides", [
    pytest.param(["algorithm=grpo", "algorithm.lr=2e-5"], id="grpo"),
    # about 5 min: outside make test (pytest -m long); PPO's update is in make test through
    # tests/test_update_dist.py and tests/test_update.py
    pytest.param(["algorithm=ppo", "algorithm.lr=2e-5", "algorithm.critic_lr=1e-5",
                  "algorithm.critic_warmup_ratio=0", "algorithm.entropy_coef=0"], id="ppo",
                 marks=pytest.mark.long),
])
def test_mean_reward_rises(make_tiny_run, overrides):
    run, _ = make_tiny_run(*COMMON, *overrides)
    cfg = config.load(run / "config.yaml")
    rewards, metrics = [], []
    for i in range(ITERATIONS):
        paths, reward = name_rollouts(run, cfg, i)
        rewards.append(reward)
        metrics.append(run_update(UpdateSpec(
            str(run / "config.yaml"), i, str(run / f"iter_{i:04d}" / "policy"), tuple(paths),
            str(run / f"iter_{i + 1:04d}" / "policy"), str(run / f"iter_{i:04d}" / "update"))))
    rewards.append(name_rollouts(run, cfg, ITERATIONS)[1])
    print(f"{cfg.algorithm.name}: mean reward by iteration {rewards}")
    assert rewards[-1] >= rewards[0] + 0.25, rewards
    # the trainer state went from each update to the next, and only the newest was kept
    # (the last update writes none: no later update of this run could read it)
    assert [m["carried_state"] for m in metrics] == [False] + [True] * (ITERATIONS - 1)
    assert not any((run / f"iter_{i:04d}" / "update" / d).exists()
                   for i in range(ITERATIONS) for d in ("state", "critic"))
