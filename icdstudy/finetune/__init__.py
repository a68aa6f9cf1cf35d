"""LoRA fine-tuning: preflight checks, the training loop, the checkpoint probe, resume (`train@` only)."""
