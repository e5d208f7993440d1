"""Resumable per-sample results (JSONL) and the summary table (JSON + Markdown) of an eval run."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SETTINGS = "settings.json"  # what the records were computed with; a resume must match it
SAMPLES = "samples.jsonl"
BATCHES = "batches.jsonl"  # one line per finished batch: the marker a resumed run trusts


def check_settings(out: Path, settings: dict[str, Any], *, resuming: bool, write: bool = True) -> None:
    """When ``resuming`` records in ``out``, refuse other settings than those stored beside them (naming
    them and the fix); then store ``settings`` (``write``) for the next resume."""
    path = out / SETTINGS
    if resuming and path.exists():
        old = json.loads(path.read_text())
        changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if changed:
            raise ValueError(f"{out} holds results computed with other {', '.join(changed)} "
                             f"({', '.join(f'{k}={old.get(k)!r}' for k in changed)}): pass --fresh to "
                             "start over, or another --out")
    if write:
        path.write_text(json.dumps(settings, indent=1) + "\n")


class ResultLog:
    """Per-sample and per-batch records under ``out``; a batch counts as done once its batch line
    is written, so samples of a batch interrupted mid-write are dropped on resume."""

    def __init__(self, out: str | Path, *, fresh: bool = False):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.samples: list[dict[str, Any]] = []
        self.batches: list[dict[str, Any]] = []
        if not fresh:
            self._load()
        self._rewrite()

    def _read(self, name: str) -> list[dict[str, Any]]:
        path = self.out / name
        rows = []
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a line cut by a kill: everything after it is redone
        return rows

    def _load(self) -> None:
        self.batches = self._read(BATCHES)
        done = self.done
        self.samples = [r for r in self._read(SAMPLES) if r.get("batch") in done]

    def _rewrite(self) -> None:
        for name, rows in ((SAMPLES, self.samples), (BATCHES, self.batches)):
            (self.out / name).write_text("".join(json.dumps(r) + "\n" for r in rows))

    def check_settings(self, settings: dict[str, Any]) -> None:
        """Refuse to resume records computed with other settings; store them for the next resume."""
        check_settings(self.out, settings, resuming=bool(self.batches))

    @property
    def done(self) -> set[int]:
        return {int(b["batch"]) for b in self.batches}

    def add(self, index: int, records: list[dict[str, Any]], terms: dict[str, Any]) -> None:
        with open(self.out / SAMPLES, "a") as fh:
            fh.write("".join(json.dumps(r) + "\n" for r in records))
        with open(self.out / BATCHES, "a") as fh:
            fh.write(json.dumps({"batch": index, **terms}) + "\n")
        self.samples.extend(records)
        self.batches.append({"batch": index, **terms})


def write_table(out: str | Path, header: dict[str, Any], rows: list[dict[str, Any]], columns: list[tuple[str, str]],
                note: str = "") -> tuple[Path, Path]:
    """``results.json`` (header + rows) and ``results.md`` (one table, ``columns`` = (key, title))."""
    out = Path(out)
    (out / "results.json").write_text(json.dumps({**header, "rows": rows}, indent=1) + "\n")

    def cell(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else "-" if v is None else str(v)

    lines = [f"# {header.get('title', 'Evaluation')}", ""]
    lines += [f"- {k}: {v}" for k, v in header.items() if k != "title"]
    lines += ["", "| " + " | ".join(t for _, t in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(k)) for k, _ in columns) + " |" for r in rows]
    if note:
        lines += ["", note]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    return out / "results.json", out / "results.md"
