"""Epoch-level progress of a training run, saved so that an interrupted run resumes where it was.

A Sports-sized run takes an hour or more on one CPU thread; a study of several runs outlives a
session, a spot instance or a laptop lid. ``Progress(path, fingerprint)`` saves, after every epoch,
everything the rest of the run depends on — model and optimizer state, the early-stopping state
(best score, epoch, metrics and weights, patience used), the per-epoch history and torch's global
random state (dropout) — in one file, replaced atomically. Batches, negatives and contrastive
pairs are keyed by (seed, epoch, rank), so a resumed run gives the same figures as one that was
never interrupted. The ``fingerprint`` (settings, seed, data sizes) must match the file's: progress
saved by another run is refused, never silently continued.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT = 1


class ProgressError(ValueError):
    """A progress file that belongs to another run; the message names the file."""


def fingerprint(*parts: Any) -> str:
    """A short hash of JSON-serializable run settings (config dump, seed, data sizes)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Progress:
    path: Path
    fingerprint: str
    accepted: tuple[str, ...] = ()  # older fingerprints of the same run (files saved by an earlier version)

    def load(self, model, optimizer, stopper) -> tuple[int, list[dict]]:
        """Restore a saved state into ``model``, ``optimizer`` and ``stopper``; ``(next epoch,
        history)``, or ``(0, [])`` when nothing was saved."""
        import torch

        if not self.path.exists():
            return 0, []
        saved = torch.load(self.path, map_location="cpu", weights_only=False)
        if saved.get("format") != FORMAT or saved.get("fingerprint") not in (self.fingerprint, *self.accepted):
            raise ProgressError(f"{self.path} holds the progress of another run (settings, seed or data differ): "
                                "remove it to start this run afresh")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        for name, value in saved["stopper"].items():
            setattr(stopper, name, value)
        torch.set_rng_state(saved["rng"])
        return saved["epoch"] + 1, saved["history"]

    def save(self, epoch: int, model, optimizer, stopper, history: list[dict]) -> None:
        """The state after ``epoch``, written to a temporary file and moved over the old one."""
        import torch

        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        torch.save({"format": FORMAT, "fingerprint": self.fingerprint, "epoch": epoch,
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "stopper": dict(vars(stopper)), "history": history, "rng": torch.get_rng_state()}, temporary)
        os.replace(temporary, self.path)

    def clear(self) -> None:
        """Remove the file once the run has its result."""
        self.path.unlink(missing_ok=True)
