"""Saving the audits' matplotlib figures: one place for layout, the output folder and closing the figure."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def save_figure(fig: Any, path: str | Path, *, dpi: int) -> Path:
    """Lay ``fig`` out tightly, write it to ``path`` (creating its folder) at ``dpi``, close it; returns ``path``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    logger.info("wrote %s", path)
    return path
