"""The trainer's settings, ``TrainConfig``: model, optimisation, early stopping and evaluation protocol.

The class lives in ``recaug_spark.config`` (the ``train`` section of ``Config`` extends it with the
experiment's keys, see ``TrainStageConfig``); it is re-exported here so that training code imports
it from the training package. Frozen, unknown keys rejected: a typo fails before anything trains.

Example::

    cfg = TrainConfig(model="sasrec", epochs=200, patience=10, seeds=(1, 2, 3))
    cfg.model_dump()["hidden"]  # 64
"""

from __future__ import annotations

from recaug_spark.config import TrainConfig

__all__ = ["TrainConfig"]
