"""Package data: the persona tables, the heuristic simulator's lexicons and lines, and the
LLM simulator's prompts.

The YAML files sit next to this module (`personas/*.yaml`, `heuristic/*.yaml`,
`simulator/*.yaml`) and ship
in the wheel; `tests/test_package_data.py` checks that they are complete.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import yaml

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@cache
def load(name: str) -> Any:
    """The parsed YAML file `rlver/data/<name>`, e.g. `load("personas/cast.yaml")`."""
    text = resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
    return yaml.load(text, Loader=_LOADER)
