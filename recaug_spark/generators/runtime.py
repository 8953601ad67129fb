"""Loading generator models on executors: once per Python worker, on the right device and threads.

The driver ships an :class:`~recaug_spark.generators.artifacts.ArtifactRef`; :func:`load` turns
it into a model through the loader registered for the artifact's ``kind`` and keeps it in a small
LRU cache that lives in this importable module — a cache defined in ``__main__`` or in a closure is
pickled with every task and the model reloaded each time. Spark reuses Python workers
between tasks (``spark.python.worker.reuse``), so each worker loads each model once; :data:`LOADS`
counts real loads per tag so tests can check it.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from recaug_spark.generators.artifacts import ArtifactError, ArtifactRef, verify

CACHE_SIZE = 4
# Modules defining artifact kinds; imported lazily by load() so that their loaders are registered.
GENERATOR_MODULES = ("recaug_spark.generators.sequence", "recaug_spark.generators.attributes",
                     "recaug_spark.generators.text")

LOADS: Counter = Counter()  # tag -> real loads in this process
_LOADERS: dict[str, Callable[[Path, dict], Any]] = {}
_CACHE: OrderedDict[tuple[str, str], Any] = OrderedDict()
_LOCK = threading.Lock()


def register_loader(kind: str):
    """Decorator: ``fn(path, manifest) -> model`` loads artifacts of ``kind``."""
    def decorate(fn):
        _LOADERS[kind] = fn
        return fn
    return decorate


def _loader(kind: str):
    if kind not in _LOADERS:
        for module in GENERATOR_MODULES:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as error:
                if error.name != module:
                    raise
    if kind not in _LOADERS:
        raise ArtifactError(f"no loader for generator kind {kind!r}; known kinds: {sorted(_LOADERS)}")
    return _LOADERS[kind]


def load(ref: ArtifactRef) -> Any:
    """The model of ``ref``, loaded once per process (LRU of :data:`CACHE_SIZE` models)."""
    key = (ref.path, ref.content_hash)
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        written = verify(ref)  # the content hash of the files on disk: a changed artifact fails here
        model = _loader(written["kind"])(Path(ref.path), written)
        LOADS[ref.tag] += 1
        _CACHE[key] = model
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
        return model


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()


def device():
    """CUDA when this process sees a GPU, else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def executor_cores() -> int:
    """Cores one task may use: ``spark.task.cpus`` inside a Spark task, else the process's CPU affinity."""
    try:
        from pyspark import TaskContext

        context = TaskContext.get()
        if context is not None:
            return max(1, int(context.cpus()))
    except Exception:  # noqa: BLE001 — outside Spark or an older API: fall back to the machine
        pass
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def set_torch_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads (per process and sticky: call it on every batch); returns the count."""
    import torch

    threads = threads or executor_cores()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def chunks(n: int, size: int = 1024) -> Iterator[slice]:
    """Slices of ~``size`` rows for batched inference (large batches build huge logit matrices)."""
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


# ---------------------------------------------------------------- fitting: seeds, early stopping, progress


def seed_everything(seed: int) -> None:
    """Seed every generator a fit may touch: torch (CPU and CUDA: weights init, dropout), Python's
    ``random`` and numpy's global one (the fitters draw from their own seeded numpy Generators; this
    only guards library code that uses the global ones), so a fit depends on its data and seed alone."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


@contextmanager
def torch_threads(threads: int):
    """Run a block with torch's intra-op threads set to ``threads``; the previous count is set back after.

    The generators are small (hidden 32–64): one thread fits them fastest on a busy machine (two
    spinning OpenMP threads on two shared cores were 6× slower in wall time, 8× in CPU time), and
    a fixed count gives the same floating-point sums on any machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class HeldOutStopping:
    """Early stopping on a held-out loss: keeps the best epoch's state (a CPU copy); ``stop`` is true
    once ``patience`` epochs in a row brought no loss lower than ``(1 - min_improvement)`` × the best."""

    def __init__(self, patience: int, min_improvement: float = 0.0):
        self.patience, self.min_improvement = patience, min_improvement
        self.best_loss, self.best_epoch, self.best_state, self.waited = float("inf"), -1, None, 0

    def observe(self, epoch: int, loss: float, model) -> bool:
        """Record one epoch's held-out loss; True when it is the new best."""
        better = self.best_state is None or loss < self.best_loss - self.min_improvement * abs(self.best_loss)
        if loss == loss and better:
            self.best_loss, self.best_epoch, self.waited = loss, epoch, 0
            self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            return True
        self.waited += 1
        return False

    @property
    def stop(self) -> bool:
        return self.waited >= self.patience

    def restore(self, model) -> None:
        """Load the best state into ``model`` (left as is when no epoch had a finite loss)."""
        if self.best_state is not None:
            model.load_state_dict(self.best_state)


class EpochProgress:
    """One stderr line per epoch of a long loop, with the time so far and an ETA for the remaining
    epochs up to the cap (an upper bound where early stopping may end the loop sooner)."""

    def __init__(self, label: str, cap: int, enabled: bool = True, echo: Callable[[str], None] | None = None):
        self.label, self.cap, self.enabled, self.started = label, cap, enabled, time.perf_counter()
        self.echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))

    def epoch(self, done: int, detail: str) -> None:
        """Report that ``done`` epochs (1-based) of the cap have run."""
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.started
        eta = elapsed / max(done, 1) * (self.cap - done)
        self.echo(f"{self.label} epoch {done}/{self.cap}: {detail} | {_clock_text(elapsed)} elapsed, "
                  f"ETA ≤ {_clock_text(eta)}")

    def note(self, text: str) -> None:
        if self.enabled:
            self.echo(f"{self.label}: {text}")


def _clock_text(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
