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
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
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
