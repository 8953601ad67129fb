"""Augmentation of training sequences and catalog items: operators, their registry and the engine.

* Operators (``sequence_ops``, ``time_ops``, ``catalog_ops``, ``context_ops``, ``balance_ops``,
  ``generator_ops``; ``item_ops``, ``attribute_ops``, ``description_ops``) are pure, vectorized,
  keyed-random functions of a batch (``base``, ``batch``); running them needs no Spark, fitting
  their state does. ``kernels`` holds the building blocks they share.
* ``registry`` imports every operator module and builds operators by config name; ``catalog``
  documents them (``docs/augmenters.md``).
* ``engine`` compiles configured branches and runs them over Arrow batches (``arrow_io``) or a
  Spark DataFrame; ``targeting`` chooses the sequences a branch augments.
* ``synthetic_sequences`` writes synthetic ``sequences`` tables for the benchmarks.
"""
