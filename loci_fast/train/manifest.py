"""Checkpoint manifests: every file's name, size and SHA-256, written at save, checked at resume.

DeepSpeed's own files can only be read by DeepSpeed's loader, which unpickles them. A resume
therefore reads them only from a checkpoint whose files all match the manifest its run wrote,
so a folder that was altered, truncated or handed over from elsewhere is refused first.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

MANIFEST = "MANIFEST.json"
_CHUNK = 1 << 20


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    """Every regular file under ``folder`` except the manifest and the COMPLETE marker, sorted."""
    skip = {MANIFEST, "COMPLETE"}
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in skip)


def build(folder: Path) -> dict[str, dict[str, int | str]]:
    """``{relative path: {"size": bytes, "sha256": hex}}`` of the files in ``folder``."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": sha256(p)}
            for p in _files(folder)}


def write(folder: Path) -> None:
    """Write ``folder``'s manifest (atomically, fsynced)."""
    from .checkpoint import write_atomic

    write_atomic(Path(folder) / MANIFEST, json.dumps({"version": 1, "files": build(folder)},
                                                     indent=1, sort_keys=True))


def problem(folder: Path) -> str | None:
    """None when every file of the manifest is present with its size and hash; else what is wrong."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        return f"{path} is missing (the checkpoint was not written by this version of loci-fast, " \
               f"or not completely)"
    try:
        files = json.loads(path.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{path} is unreadable ({err})"
    for name, entry in sorted(files.items()):
        file = folder / name
        if os.path.isabs(name) or ".." in Path(name).parts:
            return f"{path} names a file outside the checkpoint: {name}"
        if not file.is_file():
            return f"{file} is missing"
        if file.stat().st_size != entry["size"]:
            return f"{file} has {file.stat().st_size} bytes, the manifest says {entry['size']}"
        if sha256(file) != entry["sha256"]:
            return f"{file} does not match its SHA-256 in the manifest (changed after it was saved)"
    return None
