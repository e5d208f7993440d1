"""Data pipeline: the loci-video shard schema, writers, the PyBullet generator, converters, loaders."""
