"""Checkpoints: hub ids, layouts (transformers and original names), strict loading, convert."""
