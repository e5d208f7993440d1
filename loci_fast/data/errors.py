"""Errors of the data pipeline. Every message names the shard (and the sample key) and says what to do."""
from __future__ import annotations


class DataError(Exception):
    """Base class: something about the data on disk is wrong."""


class ShardError(DataError):
    """A whole shard is missing, unreadable or truncated, or the shard set cannot be split as asked."""

    def __init__(self, shard: str, problem: str | None = None, fix: str = ""):
        if problem is None:  # rebuilt from its message, e.g. when DataLoader re-raises a worker's error
            self.shard = None
            super().__init__(shard)
            return
        self.shard = str(shard)
        super().__init__(f"shard {self.shard}: {problem}. {fix}")


class SampleError(DataError):
    """One sample (one video) in a shard breaks the loci-video schema."""

    def __init__(self, shard: str, key: str | None = None, problem: str | None = None, fix: str = ""):
        if problem is None:  # rebuilt from its message (see ShardError)
            self.shard, self.key = None, None
            super().__init__(shard)
            return
        self.shard, self.key = str(shard), key
        super().__init__(f"shard {self.shard}, sample {key!r}: {problem}. {fix}")


class SourceError(DataError):
    """A file to convert into shards (e.g. an upstream HDF5 file) is unreadable or not in the expected layout."""

    def __init__(self, source: str, problem: str | None = None, fix: str = "", dataset: str | None = None):
        if problem is None:  # rebuilt from its message (see ShardError)
            self.source, self.dataset = None, None
            super().__init__(source)
            return
        self.source, self.dataset = str(source), dataset
        where = f"{self.source}, dataset {dataset!r}" if dataset else self.source
        super().__init__(f"{where}: {problem}. {fix}".rstrip())


class ParamsMismatch(DataError):
    """A folder holds shards written with other parameters than this run's, or with unknown ones."""


REWRITE = "Rewrite the shard with `loci-fast data synth` or `loci-fast data convert-hdf5`"
