"""``index.html``: one self-contained page (relative links, no external assets) showing what viz wrote."""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

STYLE = ("body{font-family:sans-serif;background:#222;color:#ddd;margin:1em}a{color:#9cf}"
         "img.thumb{max-width:160px;margin:2px;border:1px solid #444}img.main{max-width:100%}"
         "section{border-top:1px solid #555;margin-top:1em;padding-top:.5em}"
         "details{margin:.3em 0}video{max-width:100%}")


@dataclass
class VideoPage:
    """One video's entry: its animations, its per-step pictures by group, and its other files."""

    title: str
    animations: list[str] = field(default_factory=list)  # GIF / MP4 paths relative to the index
    groups: dict[str, list[str]] = field(default_factory=dict)  # e.g. "grid" -> per-step PNGs
    files: list[str] = field(default_factory=list)  # latents and the like


def _media(rel: str) -> str:
    q = html.escape(rel, quote=True)
    if rel.endswith(".mp4"):
        return f'<video controls loop src="{q}"></video> <a href="{q}">{html.escape(rel)}</a>'
    return f'<a href="{q}"><img class="main" src="{q}" alt="{q}"></a>'


def _links(rels: list[str]) -> str:
    return "<ul>" + "".join(f'<li><a href="{html.escape(r, quote=True)}">{html.escape(r)}</a></li>'
                            for r in rels) + "</ul>"


def write_index(out: str | Path, title: str, pages: list[VideoPage], notes: list[str] = (),
                files: list[str] = ()) -> Path:
    """Write ``out/index.html`` listing ``files`` (e.g. the manifest) and every page's files; returns its path."""
    out = Path(out)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    parts += [f"<p>{html.escape(n)}</p>" for n in notes]
    if files:
        parts.append(_links(list(files)))
    for page in pages:
        parts.append(f"<section><h2>{html.escape(page.title)}</h2>")
        parts += [f"<div>{_media(rel)}</div>" for rel in page.animations]
        for group, rels in page.groups.items():
            thumbs = "".join(f'<a href="{html.escape(r, quote=True)}"><img class="thumb" loading="lazy" '
                             f'src="{html.escape(r, quote=True)}" alt="{html.escape(r, quote=True)}"></a>'
                             for r in rels)
            parts.append(f"<details><summary>{html.escape(group)} ({len(rels)})</summary>{thumbs}</details>")
        if page.files:
            parts.append(_links(page.files))
        parts.append("</section>")
    parts.append("</body></html>\n")
    path = out / "index.html"
    path.write_text("".join(parts))
    return path
