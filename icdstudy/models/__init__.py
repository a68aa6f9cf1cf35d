"""Base models: materialized once per model, loaded for training or inference (dtype, 4-bit, adapters)."""
