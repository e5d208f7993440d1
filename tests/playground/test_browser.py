"""The playground in a real headless browser (Playwright driving Debian's chromium): load the page, flip a
bit, click and scroll the position map, and check that the served images changed.

Skipped where no browser is installed, with what to install; under CI (CI set) a missing browser fails,
since .ci/run installs it. The screenshot goes to pytest's tmp_path, never into the repository.
"""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from .conftest import Running, data_url_image, playground_args

INSTALL = "apt-get install chromium (Debian's package) and pip install playwright==1.65.2"


def chromium_path() -> str:
    """Debian's chromium (or LOCI_FAST_CHROMIUM); skip, or fail under CI, when it or Playwright is missing."""
    path = os.environ.get("LOCI_FAST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    problem = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problem = "Playwright is not installed"
    if path is None:
        problem = "no chromium on PATH"
    if problem:
        message = f"browser test: {problem}; install with: {INSTALL}"
        if os.environ.get("CI"):
            pytest.fail(message + " (.ci/run installs the browser)")
        pytest.skip(message)
    return path


def changing_bit(running: Running, latent: dict, bits: int) -> int:
    """A bit whose flip changes the composite for these random weights (asked of the API directly)."""
    before = running.decode(latent)["composite"]
    for index in range(bits):
        flipped = dict(latent, gestalt=[1.0 if i == index else v for i, v in enumerate(latent["gestalt"])])
        if not np.array_equal(running.decode(flipped)["composite"], before):
            return index
    raise AssertionError("no gestalt bit changes the decoded image")


def image_of(page, view: str) -> tuple[str, np.ndarray]:
    src = page.get_attribute(f'img[data-view="{view}"]', "src")
    return src, data_url_image(src)


@pytest.mark.parametrize("kind", ["loci-v1", "loci-s"])
def test_flip_click_scroll_in_headless_chromium(kind, weights, tmp_path):
    executable = chromium_path()
    from playwright.sync_api import sync_playwright

    from loci_fast.playground.command import build_server

    running = Running(build_server(playground_args(kind, weights)))
    try:
        import json

        slot = json.loads(running.get("/api/slot")[1])["slot"]
        latent = json.loads(running.get("/api/slot")[1])["latent"]
        index = changing_bit(running, latent, sum(n for _, n in slot["groups"]))
        h, w = slot["image_size"]
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=executable, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1200, "height": 1400})
                requests, errors = [], []
                page.on("request", lambda r: requests.append(r.url))
                page.on("pageerror", lambda e: errors.append(str(e)))

                def wait_decodes(n: int) -> None:
                    page.wait_for_selector(f'body[data-decodes="{n}"]', state="attached", timeout=20_000)

                page.goto(running.url)
                wait_decodes(1)
                first_src, first = image_of(page, "composite")
                assert first.shape == (h, w, 3)
                position_src, _ = image_of(page, "position")

                bit = page.locator(f'.bit[data-index="{index}"]')
                assert bit.get_attribute("aria-pressed") == "false"
                bit.click()
                wait_decodes(2)
                assert bit.get_attribute("aria-pressed") == "true"
                flipped_src, flipped = image_of(page, "composite")
                assert flipped_src != first_src and not np.array_equal(flipped, first)
                assert image_of(page, "position")[0] == position_src  # a bit does not move the slot

                box = page.locator("#position-map").bounding_box()
                page.mouse.click(box["x"] + 2, box["y"] + 2)  # the top-left pixel
                wait_decodes(3)
                moved_src, moved = image_of(page, "position")
                assert moved_src != position_src
                assert np.unravel_index(moved[..., 0].argmax(), (h, w)) == (0, 0)
                assert image_of(page, "composite")[0] != flipped_src

                page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
                page.mouse.wheel(0, -100)  # scroll up: a bigger slot
                wait_decodes(4)
                grown = image_of(page, "position")[1]
                assert grown[..., 0].astype(int).sum() > moved[..., 0].astype(int).sum()

                page.locator('.view-box.small img[data-view="mask"]').click()  # swap with the big view
                assert page.locator('#big img').get_attribute("data-view") == "mask"
                page.screenshot(path=str(tmp_path / f"playground-{kind}.png"), full_page=True)
                assert (tmp_path / f"playground-{kind}.png").stat().st_size > 1000
                assert not errors, errors
                assert all(u.startswith(running.url) or u.startswith("data:") for u in requests), requests
            finally:
                browser.close()
    finally:
        running.stop()
