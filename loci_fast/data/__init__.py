"""Data pipeline: the loci-video shard schema, writers, the PyBullet generator, converters, loaders.

Public names are imported lazily so that ``import loci_fast.data`` stays cheap (no torch).
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "iter_videos": "reader", "expand_paths": "reader", "ReadStats": "reader",
    "video_chunks": "loaders", "object_crops": "loaders", "frame_pairs": "loaders", "StreamLoader": "loaders",
    "tbptt_chunks": "views.video_chunks", "encode_video": "writer", "ShardWriter": "writer",
    "write_shard": "writer", "DataError": "errors", "ShardError": "errors", "SampleError": "errors",
    "FORMAT": "schema", "VERSION": "schema", "verify_shards": "verify", "SourceError": "errors",
    "ParamsMismatch": "errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
