"""The picture helpers on hand-built inputs: the training grid (moved from train.logs, unchanged), the
overlay formula, Gaussians, the grid geometry, latents schema, animations and the index page."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from loci_fast.viz import animate, panels
from loci_fast.viz.grid import image_grid, palette
from loci_fast.viz.views import GAP, MARGIN, grid_geometry


def test_train_logs_uses_the_same_grid():
    from loci_fast.train import logs
    from loci_fast.train.stages import proposal

    assert logs.image_grid is image_grid and proposal.palette is palette


def test_image_grid_rows_borders_and_padding():
    a = torch.full((2, 3, 2, 2), 0.5)
    a[1, 0] = 1.0  # second sample red-ish
    b = torch.zeros(1, 1, 2, 2)
    grid = image_grid({"a": a, "b": b})
    assert grid.shape == (8, 8, 3) and grid.dtype == np.uint8
    assert (grid[0, :] == 255).all() and (grid[:, 0][:4] == 255).all()  # white 1-px borders of row a
    assert tuple(grid[1, 1]) == (128, 128, 128) and tuple(grid[1, 5]) == (255, 128, 128)
    assert tuple(grid[5, 1]) == (0, 0, 0) and (grid[4:8, 4:] == 0).all()  # row b: one tile, black padding
    assert image_grid({"a": a}, max_items=1).shape == (4, 4, 3)


def test_palette_is_distinct_and_pure():
    colours = palette(6)
    assert colours.shape == (6, 3) and torch.equal(colours[0], torch.tensor([1.0, 0.0, 0.0]))
    assert len({tuple(c.tolist()) for c in colours}) == 6


def test_highlight_follows_the_overlay_formula():
    gen = torch.Generator().manual_seed(0)
    rgb = torch.rand(1, 3, 5, 4, generator=gen)
    masks = torch.rand(1, 3, 5, 4, generator=gen) / 3
    grey = 0.299 * rgb[:, 0:1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:3]
    cover = masks.sum(1, keepdim=True)
    colour = sum(masks[:, k:k + 1] * palette(3)[k].view(1, 3, 1, 1) for k in range(3))
    expected = (grey * (1 - cover) + grey * cover / 3 + 2 / 3 * colour).clamp(0, 1)
    torch.testing.assert_close(panels.highlight(rgb, masks), expected)
    # no mask: the plain grey frame
    torch.testing.assert_close(panels.highlight(rgb, torch.zeros_like(masks)), grey.expand(-1, 3, -1, -1))


def test_slot_gaussians_peak_at_the_slot_and_cover_the_background():
    pos = torch.tensor([[0.0, 0.0, 0.0, 0.1, 1.0, -1.0, 0.0, 0.1]])  # slot 0 centre, slot 1 top right
    maps = panels.slot_gaussians(pos, 2, (9, 9), (4, 4))
    assert maps.shape == (1, 3, 9, 9)
    assert divmod(int(maps[0, 0].argmax()), 9) == (4, 4) and divmod(int(maps[0, 1].argmax()), 9) == (0, 8)
    # background at (0, 0) with std 1 clipped to 0.5: exp(-(1 + 1) / (2 * 0.25)) in the corners
    assert maps[0, 2, 4, 4] == pytest.approx(1) and maps[0, 2, 0, 0] == pytest.approx(np.exp(-4), rel=1e-5)
    # std below 1/min(latent) is raised to it
    small = panels.slot_gaussians(torch.tensor([[0.0, 0.0, 0.0, 0.0]]), 1, (9, 9), (4, 4))
    ref = panels.slot_gaussians(torch.tensor([[0.0, 0.0, 0.0, 0.25]]), 1, (9, 9), (4, 4))
    torch.testing.assert_close(small, ref)


@pytest.mark.parametrize("size, columns", [((64, 64), 5), ((128, 96), 12), ((240, 320), 8)])
def test_grid_geometry_fits_slot_columns_and_main_rows(size, columns):
    g = grid_geometry(size, columns)
    h, w = size
    assert g["width"] >= 3 * w + 4 * MARGIN - MARGIN  # three main panels with margins
    assert MARGIN + columns * g["object_width"] + (columns - 1) * GAP <= g["width"]
    assert g["height"] == 2 * h + 4 * MARGIN + 3 * GAP + 4 * g["object_height"]
    assert abs(g["object_height"] / g["object_width"] - h / w) < 0.1


def test_resize_clips_and_canvas_pastes():
    x = torch.tensor([[[[0.0, 2.0], [-1.0, 0.5]]]])
    assert panels.resize(x, (2, 2)).max() == 1 and panels.resize(x, (2, 2)).min() == 0
    c = panels.Canvas(4, 5)
    c.paste(torch.ones(3, 2, 2), 1, 2)
    img = c.uint8()
    assert tuple(img[0, 0]) == (51, 51, 51) and tuple(img[1, 2]) == (255, 255, 255) and tuple(img[3, 4]) == (51,) * 3


def test_latents_round_trip_and_refuse_other_files(tmp_path):
    from safetensors.torch import save_file

    from loci_fast.viz.latents import latent_tensors, read_latents, write_latents

    records = [{"time": t, "position": torch.rand(1, 2, 4), "gestalt": torch.rand(1, 2, 5) * 1.4 - 0.2,
                "priority": torch.rand(1, 2)} for t in (-1, 0, 1)]
    tensors = latent_tensors(records)
    assert tensors["position"].shape == (3, 2, 4) and tensors["gestalt_bits"].dtype == torch.uint8
    write_latents(tmp_path, tensors, kind="loci", video="v")
    back, meta = read_latents(tmp_path / "latents.safetensors")
    assert meta["video"] == "v" and all(torch.equal(back[k], tensors[k]) for k in tensors)
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="write it with loci-fast viz"):
        read_latents(tmp_path / "other.safetensors")


def test_gif_frames_and_mp4_without_the_plugin(tmp_path, monkeypatch, capsys):
    import imageio.v3 as iio

    frames = [np.full((7, 9, 3), v, np.uint8) for v in (0, 120, 250)]
    frames[1][2, 3] = (255, 0, 0)
    gif = iio.imread(animate.write_gif(tmp_path / "a.gif", frames), index=None)
    assert gif.shape[0] == 3 and tuple(gif[1][2, 3][:3]) == (255, 0, 0)
    monkeypatch.setattr(animate, "ffmpeg_available", lambda: False)
    assert animate.write_mp4(tmp_path / "a.mp4", frames) is None
    assert "imageio-ffmpeg" in capsys.readouterr().err and not (tmp_path / "a.mp4").exists()


@pytest.mark.skipif(not animate.ffmpeg_available(), reason="imageio-ffmpeg is not installed (pip install imageio-ffmpeg)")
def test_mp4_has_every_frame_at_odd_sizes(tmp_path):
    import imageio.v3 as iio

    frames = [np.full((7, 9, 3), v, np.uint8) for v in (0, 120, 250, 60)]
    path = animate.write_mp4(tmp_path / "a.mp4", frames)
    back = iio.imread(path, plugin="FFMPEG", index=None)
    assert back.shape[:3] == (4, 8, 10) and abs(int(back[2].mean()) - 250) < 8


def test_index_page_links(tmp_path):
    from loci_fast.viz.html import VideoPage, write_index
    from tests.viz.helpers import page_links

    page = VideoPage("v", ["v/a.gif", "v/a.mp4"], {"grid": ["v/g 1.png"]}, ["v/latents.json"])
    index = write_index(tmp_path, "t <x>", [page], files=["m.json"])
    text = index.read_text()
    assert "t &lt;x&gt;" in text and "http" not in text
    assert sorted(set(page_links(index))) == ["m.json", "v/a.gif", "v/a.mp4", "v/g 1.png", "v/latents.json"]


UPSTREAM = os.environ.get("LOCI_FAST_UPSTREAM")


@pytest.mark.skipif(not UPSTREAM, reason="set LOCI_FAST_UPSTREAM to an upstream Loci-Segmented checkout")
def test_position_panels_equal_upstreams_gaus2d_of_the_save_grid():
    from tests.model.test_blocks import upstream_modules

    gen = torch.Generator().manual_seed(4)
    b, o, size, latent = 2, 3, (24, 40), (6, 10)
    pos = torch.cat([torch.rand(b, o, 2, generator=gen) * 8 - 4, torch.rand(b, o, 1, generator=gen),
                     torch.rand(b, o, 1, generator=gen) * 1.2], 2).reshape(b, o * 4)
    ours = panels.slot_gaussians(pos, o, size, latent)
    with upstream_modules(UPSTREAM) as imp:
        gaus2d = imp("utils.utils").Gaus2D(size, position_limit=3.5)
        # upstream's save(): the background as (0, 0, 0, 1), the std clamped to [1/min(latent), 1] first
        p = torch.cat([pos, torch.zeros(b, 3), torch.ones(b, 1)], 1).reshape(b * (o + 1), 4)
        p = torch.cat([p[:, :3], p[:, 3:].clamp(1 / min(latent), 1)], 1)
        theirs = gaus2d(p).reshape(b, o + 1, *size)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
