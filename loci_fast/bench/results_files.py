"""Writing a benchmark's results: ``<stem>.json`` and ``<stem>.md`` side by side, each atomically."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_atomic(path: Path, text: str) -> None:
    """Write through a temporary file and a rename: a run killed mid-write leaves the last whole file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_results(out_dir: str | Path, stem: str, results: dict[str, Any], markdown: str) -> Path:
    """``out_dir/<stem>.json`` (``results``) and ``out_dir/<stem>.md`` (``markdown``); sets and returns
    ``results["path"]``, the JSON file."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}.json"
    write_atomic(path, json.dumps(results, indent=1, default=str) + "\n")
    write_atomic(out / f"{stem}.md", markdown)
    results["path"] = str(path)
    return path
