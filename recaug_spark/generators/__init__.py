"""Generator models for model-based augmentation: versioned artifacts, the executor runtime, and
the sequence (Transformer), item-attribute (VAE) and description-expansion generators."""
