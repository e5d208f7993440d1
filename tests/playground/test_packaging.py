"""The page's files are package data: setup.py's package_data (wheels, editable installs) and MANIFEST.in
(sdists) must both name every file in loci_fast/playground/static."""
from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

from .conftest import REPO

STATIC = REPO / "loci_fast/playground/static"


def package_data() -> dict[str, list[str]]:
    """The literal package_data argument of setup() in setup.py."""
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "package_data":
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py passes no package_data")


def test_every_static_file_is_package_data():
    files = sorted(p.relative_to(STATIC.parent).as_posix() for p in STATIC.iterdir())
    assert {"static/index.html", "static/playground.js", "static/playground.css"} <= set(files)
    patterns = package_data()["loci_fast.playground"]
    assert [f for f in files if not any(fnmatch.fnmatch(f, p) for p in patterns)] == []
    manifest = [line.split() for line in (REPO / "MANIFEST.in").read_text().splitlines()
                if line.startswith("recursive-include")]
    globs = [g for words in manifest if words[1] == "loci_fast/playground/static" for g in words[2:]]
    assert [f for f in files if not any(fnmatch.fnmatch(Path(f).name, g) for g in globs)] == []


def test_the_server_reads_the_page_from_the_installed_package():
    from loci_fast.playground.server import STATIC as SERVED
    from loci_fast.playground.server import static_file

    assert sorted(SERVED) == sorted(p.name for p in STATIC.iterdir())
    for name in SERVED:
        assert static_file(name) == (STATIC / name).read_bytes()
