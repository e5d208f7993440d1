"""The resumable per-video log of a Loci-s evaluation: ``videos.jsonl``, one finished video per line.

A line is written only once a video's numbers are complete, so a killed run leaves finished lines
(and at most one cut line, which is dropped) and a rerun skips the (mode, seed, dataset, video)
combinations already there. ``settings.json`` holds what the lines were computed with; a rerun with
other settings is refused unless ``fresh``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VIDEOS = "videos.jsonl"
SETTINGS = "settings.json"


def record_id(rec: dict[str, Any]) -> tuple[str, int, str, str]:
    """What identifies a line: (mode, seed, dataset, video)."""
    return str(rec["mode"]), int(rec["seed"]), str(rec["dataset"]), str(rec["video"])


class VideoLog:
    """Per-video records under ``out`` (rank 0 writes; other ranks only read ``done``)."""

    def __init__(self, out: str | Path, *, fresh: bool = False, write: bool = True):
        self.out = Path(out)
        self.write = write
        self.records: list[dict[str, Any]] = []
        if write:
            self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / VIDEOS
        if not fresh and path.exists():
            for line in path.read_text().splitlines():
                try:
                    self.records.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a line cut by a kill: that video and any after it are redone
        if write:
            path.write_text("".join(json.dumps(r) + "\n" for r in self.records))
            if fresh:
                (self.out / SETTINGS).unlink(missing_ok=True)

    @property
    def done(self) -> set[tuple[str, int, str, str]]:
        return {record_id(r) for r in self.records}

    def check_settings(self, settings: dict[str, Any]) -> None:
        """Refuse records computed with other settings (naming them and the fix); store these."""
        from ..results import check_settings

        check_settings(self.out, settings, resuming=bool(self.records), write=self.write)

    def add(self, records: list[dict[str, Any]]) -> None:
        """Append finished videos (one flush per call)."""
        if not records:
            return
        if self.write:
            with open(self.out / VIDEOS, "a") as fh:
                fh.write("".join(json.dumps(r) + "\n" for r in records))
                fh.flush()
        self.records.extend(records)
