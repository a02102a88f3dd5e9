"""``curves.png``: training/validation loss and validation Dice per epoch, refreshed each epoch."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# Figure without pyplot: no global backend state, no window, safe on headless servers.
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from spineseg.io import atomic_path


def plot_curves(history: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Plot ``epoch`` against ``train_loss``/``val_loss`` and ``val_dice``; write atomically."""
    epochs = [int(r["epoch"]) for r in history]
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_loss, ax_dice = fig.subplots(1, 2)
    ax_loss.plot(epochs, [float(r["train_loss"]) for r in history], "o-", label="train")
    ax_loss.plot(epochs, [float(r["val_loss"]) for r in history], "s-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_dice.plot(epochs, [float(r["val_dice"]) for r in history], "o-", color="tab:green")
    ax_dice.set(xlabel="epoch", ylabel="DSC", title="Validation DSC (pooled)", ylim=(0, 1))
    ax_dice.grid(alpha=0.3)
    for ax in (ax_loss, ax_dice):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    with atomic_path(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return Path(path)
