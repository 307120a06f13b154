"""The update's spec: the files of one update, as plain data (submitit pickles it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from rlver import layout


@dataclass(frozen=True)
class UpdateSpec:
    """Everything an update job needs; plain data so submitit can pickle it."""

    config_path: str
    iteration: int
    policy_dir: str
    rollout_paths: tuple[str, ...]
    out_policy_dir: str
    update_dir: str

    @property
    def run(self) -> layout.Run:
        """The run this update belongs to (found from its update folder)."""
        return layout.Run.of_update_dir(self.update_dir)

    @property
    def prev_update_dir(self) -> Optional[Path]:
        """Update i-1's folder, where its carried state is."""
        return None if self.iteration == 0 else self.run.update_dir(self.iteration - 1)

    @property
    def reference_dir(self) -> Path:
        """The KL reference: the run's base policy."""
        return layout.Run.of_config(self.config_path).reference_policy
