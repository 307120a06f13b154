"""The paper's published results, shown next to a run's own numbers for reference.

Transcribed from RLVER (Wang et al., arXiv 2507.03112): Table 1, the Sentient
benchmark's score / success / failure (its chit-chat columns are left out: we have no
chit-chat benchmark), Table 2, the general abilities kept (MATH500, LiveCodeBench, IFEval),
and Table 3, the PPO simulator ablation, which publishes scores only.
Settings use our config names: algorithm.name, template.name and the training
simulator.difficulty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

#: The paper's base model.
BASE_MODEL = "Qwen2.5-7B-Instruct"


@dataclass(frozen=True)
class PaperResult:
    """One published number set. algorithm/template/difficulty None: the base model."""

    table: str
    algorithm: Optional[str]
    template: Optional[str]
    difficulty: Optional[str]
    #: `Sentient` (the vanilla benchmark) or `Sentient-challenging`.
    benchmark: str
    score: float
    success_pct: Optional[int] = None
    failure_pct: Optional[int] = None


RESULTS: tuple[PaperResult, ...] = (
    # Table 1: Sentient benchmark (100 test personas, simulator DeepSeek-V3). The RL rows
    # were trained with the vanilla simulator (their scores are Table 3's vanilla rows).
    PaperResult("Table 1", None, None, None, "Sentient", 13.3, 2, 76),
    PaperResult("Table 1", "ppo", "nothink", "vanilla", "Sentient", 61.7, 24, 23),
    PaperResult("Table 1", "ppo", "think", "vanilla", "Sentient", 79.2, 42, 9),
    PaperResult("Table 1", "grpo", "nothink", "vanilla", "Sentient", 68.3, 26, 10),
    PaperResult("Table 1", "grpo", "think", "vanilla", "Sentient", 72.0, 34, 10),
    # Table 3: PPO, Sentient / Sentient-challenging scores by training simulator. The
    # vanilla rows' Sentient scores are Table 1's and are not repeated.
    PaperResult("Table 3", "ppo", "nothink", "vanilla", "Sentient-challenging", 47.7),
    PaperResult("Table 3", "ppo", "think", "vanilla", "Sentient-challenging", 59.6),
    PaperResult("Table 3", "ppo", "nothink", "challenging", "Sentient", 19.8),
    PaperResult("Table 3", "ppo", "nothink", "challenging", "Sentient-challenging", 25.9),
    PaperResult("Table 3", "ppo", "think", "challenging", "Sentient", 66.4),
    PaperResult("Table 3", "ppo", "think", "challenging", "Sentient-challenging", 44.7),
)


def for_setting(algorithm: str, template: str, difficulty: str) -> list[PaperResult]:
    """The base model's results and those trained as (algorithm, template, difficulty),
    in the paper's order; only the base model's when the paper has no such row."""
    return [
        r
        for r in RESULTS
        if r.algorithm is None
        or (r.algorithm, r.template, r.difficulty) == (algorithm, template, difficulty)
    ]


@dataclass(frozen=True)
class PaperAbilities:
    """One row of Table 2: general-ability scores (percent) of the base model
    (algorithm/template None) or of a model trained as (algorithm, template)."""

    algorithm: Optional[str]
    template: Optional[str]
    math500: float
    livecodebench: float
    ifeval: float

    def score(self, benchmark: str) -> float:
        """The score on one of TABLE2_BENCHMARKS."""
        return float(getattr(self, benchmark.lower()))


#: Table 2's benchmarks, in its column order.
TABLE2_BENCHMARKS = ("MATH500", "LiveCodeBench", "IFEval")

#: Table 2: general abilities of the base model and of the think models after training
#: (vanilla simulator), MATH500 / LiveCodeBench / IFEval.
GENERAL_ABILITIES: tuple[PaperAbilities, ...] = (
    PaperAbilities(None, None, 77.8, 26.7, 70.4),
    PaperAbilities("ppo", "think", 76.6, 28.0, 68.6),
    PaperAbilities("grpo", "think", 75.2, 29.3, 69.7),
)
