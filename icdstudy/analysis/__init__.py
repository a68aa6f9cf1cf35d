"""From predictions to numbers: per-system scores, certified thresholds and costs, paired statistics."""
