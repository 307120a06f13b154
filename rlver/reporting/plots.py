"""Matplotlib set-up shared by the run report and the results page: headless, default
style, and PNG bytes that do not change between reruns of the same numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """pyplot on the Agg backend with default style: headless and reproducible."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path) -> None:
    """Save without the version stamp so reruns give identical bytes; always close."""
    plt = pyplot()
    try:
        fig.savefig(path, format="png", dpi=100, metadata={"Software": None})
    finally:
        plt.close(fig)


def figure(size: tuple[float, float], ncols: int = 1) -> tuple[Any, Any]:
    """Constrained layout keeps labels and outside legends inside the fixed size."""
    return pyplot().subplots(1, ncols, figsize=size, squeeze=False, layout="constrained")


def integer_axis(axis: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def no_data(ax: Any, text: str) -> None:
    """A grey note in the middle of an empty panel."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")
