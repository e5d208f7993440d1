"""The parameters a folder's shards were written with, kept beside them in ``<name>.params.json``.

``synth`` and ``convert-hdf5`` resume an interrupted run by keeping the shards that exist. That is
only right when the rerun asks for the same shards: a rerun with another seed, size or shard size
would otherwise mix two datasets in one folder without a word. The first run of a name writes its
parameters before its first shard; a rerun compares and refuses on any difference.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import ParamsMismatch

PARAMS_SUFFIX = ".params.json"


def params_path(out_dir: str | Path, name: str) -> Path:
    """``<out_dir>/<name>.params.json``: the parameters of the shards ``<name>-%06d.tar``."""
    return Path(out_dir) / f"{name}{PARAMS_SUFFIX}"


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def claim_folder(out_dir: str | Path, name: str, params: dict[str, Any]) -> None:
    """Record ``params`` for the shards ``<name>-*.tar`` in ``out_dir``, or check them against a rerun's.

    ``params`` maps the command's option names (``shard_videos`` for ``--shard-videos``) to JSON
    values; ``params["command"]`` names the command. Raises ``ParamsMismatch`` naming the
    differing options when the folder's shards were written with others, or when shards exist
    without a parameters file (an older loci-fast, or copied by hand), since then nobody knows.
    """
    out_dir = Path(out_dir)
    path = params_path(out_dir, name)
    params = json.loads(json.dumps(params))  # tuples -> lists, as they come back from the file
    shards = sorted(out_dir.glob(f"{name}-[0-9]*.tar"))
    fix = (f"Write to another --out folder, or delete {out_dir} (or its {name}-*.tar and {path.name}) "
           "to start over")
    if shards and path.is_file():
        try:
            stored = json.loads(path.read_text())
        except ValueError as err:
            raise ParamsMismatch(f"{path} is not valid JSON ({err}), so it is unknown how the "
                                 f"{len(shards)} shard(s) {name}-*.tar beside it were made. {fix}") from None
        if stored != params:
            keys = sorted(set(stored) | set(params), key=lambda k: (k != "command", k))
            diffs = [f"{_flag(k) if k != 'command' else 'command'} {stored.get(k, '(unset)')!r} there, "
                     f"{params.get(k, '(unset)')!r} now" for k in keys if stored.get(k) != params.get(k)]
            raise ParamsMismatch(f"{out_dir} holds {len(shards)} shard(s) {name}-*.tar written with other "
                                 f"parameters ({path.name}: {'; '.join(diffs)}); they would mix with this "
                                 f"run's. {fix}")
        return
    if shards:
        raise ParamsMismatch(f"{out_dir} holds {len(shards)} shard(s) {name}-*.tar but no {path.name} saying "
                             f"how they were made (written by an older loci-fast or by hand), so they "
                             f"cannot be reused safely. {fix}")
    # No shard yet: a first run, or one that stopped before its first shard. (Re)write the record.
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(params, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
