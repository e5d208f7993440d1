"""``verify_shards``: walk every shard's whole tar index before training starts.

A truncated or corrupt shard otherwise surfaces only when a DataLoader worker reaches it, which in
a resampled training stream can be hours in, after DeepSpeed and every rank have started. Walking
the member headers seeks over the pixel data, so a shard costs a few file reads, not a decode.
"""
from __future__ import annotations

import os
from typing import Iterable

from .errors import ShardError
from .reader import expand_paths, iter_raw

CHECK = "Check the shards with `loci-fast data inspect --check DIR`"


def verify_shards(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> dict[str, int]:
    """The number of samples in each shard, after checking that every shard is a whole tar file.

    ``paths`` is anything ``expand_paths`` takes (files, folders, globs, brace patterns). Raises
    ``ShardError`` naming the shard and the fix for a shard that is missing, not a tar file,
    truncated or corrupt (no end-of-archive marker where its last member ends), or empty.
    """
    counts: dict[str, int] = {}
    for shard in expand_paths(paths):
        # only=() reads no member's bytes: iter_raw walks the headers and checks the archive's end.
        counts[shard] = sum(1 for _ in iter_raw(shard, only=()))
        if not counts[shard]:
            raise empty_shard(shard)
    return counts


def empty_shard(shard: str, others: int = 0) -> ShardError:
    """The error for a valid tar archive that holds no sample; ``others``: how many more are empty too."""
    also = f", and so are the other {others} shard(s) given" if others else ""
    return ShardError(shard, f"a tar file with no sample (no video) in it{also}", "Write the shards again with "
                      "`loci-fast data synth` or `loci-fast data convert-hdf5`, or leave this file out of "
                      f"the shard list. {CHECK}")
