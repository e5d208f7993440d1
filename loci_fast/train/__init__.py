"""DeepSpeed training: engine loop, stages, optimizers, checkpoints."""
