"""Views over loci-video samples: each turns a decoded video into training/evaluation items.

A view has ``plan(meta, rng, training) -> list`` (the items of one video, from metadata alone, so
streams can count and skip items without decoding), ``make(video, item, rng, training) -> dict``
(one item's tensors) and ``dummy() -> dict`` (a zero item for padding evaluation batches).
"""
