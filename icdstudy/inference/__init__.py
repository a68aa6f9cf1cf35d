"""Prompts, prompt styles, constrained decoding and batched evaluation of a language model."""
