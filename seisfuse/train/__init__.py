"""Training: optimizers (and, later, the generic sharded loop and tasks)."""
