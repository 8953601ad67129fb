"""Augmenters: pure, vectorized, keyed-random functions of sequence batches (no Spark needed)."""
