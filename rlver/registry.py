"""Choices by name: the trainer's advantage estimators, credit, GRPO's group
normalisation, policy losses, rollout importance sampling and KL estimators, as verl's
`core_algos` registers them, and the backends the stages' scalars go to.

Each registry maps the names a config key accepts to the functions that implement them.
Entries are written as "module:function" and imported when the trainer looks them up, so
the config is checked against the names (`Registry.check`, at compose time) without
importing torch. Adding a choice is one function, one line here and one test; a name
registered at run time (`Registry.register`, e.g. from a test or a plug-in) is accepted
the same way.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Union

from rlver.errors import RlverInputError

Target = Union[str, Callable[..., Any]]


class Registry:
    """Names accepted by one config key, each resolving to a function."""

    def __init__(self, key: str, entries: dict[str, str]) -> None:
        self.key = key
        self._entries: dict[str, Target] = dict(entries)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def register(self, name: str, target: Target) -> None:
        """Add `name` ("module:function" or the function itself); refuses a taken name."""
        if name in self._entries:
            raise ValueError(f"{self.key}: {name!r} is registered already")
        self._entries[name] = target

    def unregister(self, name: str) -> None:
        del self._entries[name]

    def check(self, name: str) -> None:
        """Refuse a name nobody registered, listing the known ones."""
        if name not in self._entries:
            raise RlverInputError(
                f"config: {self.key}={name!r} is not a known choice. "
                f"Fix: use one of {', '.join(self.names())}.")

    def get(self, name: str) -> Callable[..., Any]:
        self.check(name)
        target = self._entries[name]
        if callable(target):
            return target
        module, _, attr = target.partition(":")
        fn: Callable[..., Any] = getattr(importlib.import_module(module), attr)
        return fn


#: How rewards become per-token advantages (and, with a critic, returns).
ADV_ESTIMATORS = Registry("algorithm.adv_estimator", {
    "grpo": "rlver.train.advantages:grpo",
    "gae": "rlver.train.advantages:gae",
})

#: What each reply of a dialogue is credited with (the units an estimator scores).
CREDITS = Registry("algorithm.credit", {
    "final": "rlver.train.advantages:credit_final",
    "turn": "rlver.train.advantages:credit_turn",
})

#: How GRPO scales the rewards centred within their group.
GROUP_NORMS = Registry("algorithm.adv_std", {
    "group": "rlver.algorithms:norm_by_group_std",
    "batch": "rlver.algorithms:norm_by_batch_std",
    "none": "rlver.algorithms:norm_none",
})

#: The per-token policy loss from log-probs, rollout log-probs and advantages.
POLICY_LOSSES = Registry("algorithm.policy_loss", {
    "ppo_clip": "rlver.train.losses:ppo_clip",
})

#: Importance-sampling corrections of the loss for the rollout engine's sampling: per
#: token weights from the trainer's and the engine's log-probs, or None (no correction).
ROLLOUT_IS = Registry("algorithm.rollout_is", {
    "none": "rlver.algorithms:no_rollout_is",
    "tis": "rlver.algorithms:truncated_rollout_is",
})

#: Estimators of KL(policy || reference) from the sampled tokens' log-probs.
KL_ESTIMATORS = Registry("algorithm.kl_estimator", {
    "k1": "rlver.algorithms:kl_k1",
    "k3": "rlver.algorithms:kl_k3",
})


#: Where the stages' scalars go (`logging.backends`, rlver.scalars): each entry writes one
#: job's points, `fn(job, points)`, and raises on failure.
TRACKERS = Registry("logging.backends", {
    "tensorboard": "rlver.scalars:tensorboard",
    "wandb": "rlver.trackers.wandb_run:write",
    "mlflow": "rlver.trackers.mlflow_run:write",
})


def adv_estimator(alg: Any) -> str:
    """The estimator `algorithm.adv_estimator` names; empty means the algorithm's own."""
    return str(alg.adv_estimator or {"ppo": "gae"}.get(alg.name, "grpo"))
