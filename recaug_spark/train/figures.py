"""Matplotlib figures drawn without a display: one way to open a figure and one to save and close it,
shared by the experiment report (``report.py``) and the data-quality report (``quality.py``)."""

from __future__ import annotations

from pathlib import Path


def new_figure(**subplots):
    """``(figure, axes)`` of ``matplotlib.pyplot.subplots(**subplots)``, drawn without a display."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(**subplots)


def save_figure(fig, path: Path) -> str:
    """Lays ``fig`` out, saves it as a 100-dpi PNG at ``path`` and closes it; returns the file name."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name
