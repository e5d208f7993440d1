"""`loci-fast viz` on a tiny Loci-s model: the files, correct colours, animations, latents, index.html, errors."""
from __future__ import annotations

import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from loci_fast.cli import main
from loci_fast.viz.animate import ffmpeg_available
from loci_fast.viz.latents import read_latents
from loci_fast.viz.views import MARGIN
from tests.viz.helpers import RED, is_red, loci_shard, loci_weights, page_links

SCALE = 2


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("viz-loci")
    shard = loci_shard(tmp / "data")
    weights = loci_weights(tmp / "loci.safetensors")
    out = tmp / "out"
    rc = main(["viz", "--checkpoint", str(weights), "--data", str(shard), "--videos", "0", "--out", str(out),
               "--scale", str(SCALE), "--seed", "3", "--no-progress"])
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    return {"out": out, "shard": shard, "weights": weights, "manifest": manifest,
            "video": out / manifest["videos"][0]["folder"]}


def test_files_per_step_and_steps_follow_the_teacher_forcing_schedule(rendered):
    video = rendered["manifest"]["videos"][0]
    # tiny loci-s: teacher_forcing 2, backprop_steps 2 -> T_f = 3 steps on frame 0, then frames 0, 1 predicting 1, 2
    assert video["times"] == [-3, -2, -1, 0, 1]
    folder = rendered["video"]
    grids = sorted((folder / "grid").glob("*.png"))
    assert [g.name for g in grids] == [f"step-{i:03d}.png" for i in range(5)]
    panels = {p.name for p in (folder / "panels" / "step-004").glob("*.png")}
    for k in ("slot0", "slot3", "bg"):
        assert {f"{k}_rgb.png", f"{k}_depth.png", f"{k}_mask.png", f"{k}_position.png"} <= panels
    assert {"segmentation.png", "background_rgb.png", "uncertainty.png", "input_rgb.png"} <= panels
    assert (folder / "animation.gif").exists() and (folder / "latents.json").exists()
    if ffmpeg_available():
        frames = iio.imread(folder / "animation.mp4", plugin="FFMPEG", index=None)
        assert len(frames) == 5


def test_grid_geometry_and_a_red_pixel_stays_red(rendered):
    folder = rendered["video"]
    grid = np.asarray(Image.open(folder / "grid" / "step-004.png").convert("RGB"))
    size = 64 * SCALE
    assert grid.shape[0] > 2 * size + 4 * MARGIN and grid.shape[1] >= 3 * size + 3 * MARGIN
    r, c = (RED[0].start + RED[0].stop) // 2 * SCALE, (RED[1].start + RED[1].stop) // 2 * SCALE
    assert is_red(grid[MARGIN + r, MARGIN + c])  # the GT RGB panel, top left
    assert tuple(grid[2, 2]) == (51, 51, 51)  # the 0.2-grey canvas
    panel = np.asarray(Image.open(folder / "panels" / "step-004" / "input_rgb.png").convert("RGB"))
    assert is_red(panel[r, c]) and not is_red(panel[2, 2])


def test_gif_has_one_frame_per_step_and_keeps_red(rendered):
    frames = iio.imread(rendered["video"] / "animation.gif", index=None)
    assert frames.shape[0] == 5
    r, c = (RED[0].start + RED[0].stop) // 2 * SCALE, (RED[1].start + RED[1].stop) // 2 * SCALE
    for frame in frames:
        assert is_red(frame[MARGIN + r, MARGIN + c])


def test_latents_reload_on_the_cpu_and_equal_the_models_outputs(rendered):
    from loci_fast.viz.rendering import _loci_inputs, load_viz_model

    tensors, meta = read_latents(rendered["video"] / "latents.safetensors")
    assert meta["kind"] == "loci" and meta["position_fields"] == ["x", "y", "z", "std"]
    assert all(t.device.type == "cpu" for t in tensors.values())
    # the model run directly, same seed, same input: prediction latents for tau >= 0, reconstruction before
    model, cfg, _ = load_viz_model(rendered["weights"])
    from loci_fast.data.reader import iter_videos

    rgb, depth, use_depth = _loci_inputs(cfg, next(iter_videos(rendered["shard"])), None)
    ts = torch.arange(-3, 3)
    torch.manual_seed(3)
    with torch.no_grad():
        out = model(rgb[ts.clamp_min(0)][None], depth[ts.clamp_min(0)][None], ts, torch.tensor([use_depth]),
                    model.initial_state(1), evaluate=True)
    o = model.num_slots
    for i, step in enumerate(out.steps):
        shown = step.reconstruction if ts[i] < 0 else step.prediction
        torch.testing.assert_close(tensors["position"][i], shown["position"].reshape(o, 4), rtol=0, atol=0)
        torch.testing.assert_close(tensors["gestalt"][i], shown["gestalt"].reshape(o, -1), rtol=0, atol=0)
        torch.testing.assert_close(tensors["priority"][i], shown["priority"].reshape(o), rtol=0, atol=0)
    assert torch.equal(tensors["gestalt_bits"], tensors["gestalt"].clamp(0, 1).round().to(torch.uint8))
    assert tensors["time"].tolist() == [-3, -2, -1, 0, 1]
    doc = json.loads((rendered["video"] / "latents.json").read_text())
    assert doc["schema"] == meta["schema"] and np.allclose(doc["tensors"]["position"], tensors["position"].numpy())


def test_index_links_every_written_file_and_nothing_missing(rendered):
    out = rendered["out"]
    links = page_links(out / "index.html")
    assert links and all(not link.startswith(("http:", "https:", "/")) for link in links)
    assert all((out / link).exists() for link in links)
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} - {"index.html"}
    assert written == set(links)


@pytest.mark.slow
def test_same_seed_same_pictures(rendered, tmp_path):
    assert main(["viz", "--checkpoint", str(rendered["weights"]), "--data", str(rendered["shard"]), "--out",
                 str(tmp_path), "--scale", str(SCALE), "--seed", "3", "--no-progress", "--no-panels"]) == 0
    again = json.loads((tmp_path / "manifest.json").read_text())["videos"][0]["folder"]
    a = np.asarray(Image.open(rendered["video"] / "grid" / "step-004.png"))
    b = np.asarray(Image.open(tmp_path / again / "grid" / "step-004.png"))
    assert np.array_equal(a, b)
    assert not (tmp_path / again / "panels").exists()


def test_errors_name_the_problem_and_the_fix(rendered, tmp_path, capsys):
    base = ["viz", "--checkpoint", str(rendered["weights"]), "--data", str(rendered["shard"]), "--out",
            str(tmp_path / "x"), "--no-progress"]
    assert main(base + ["--videos", "4"]) == 2
    assert "hold 1 videos (indices 0-0)" in capsys.readouterr().err
    assert main(base + ["--videos", "a"]) == 2
    assert "not an index" in capsys.readouterr().err
    assert main(base + ["--mode", "segmentation"]) == 2
    assert "proposal" in capsys.readouterr().err
    stage1 = loci_weights(tmp_path / "s1.safetensors", stage="stage1")
    assert main(["viz", "--checkpoint", str(stage1), "--data", str(rendered["shard"]), "--out", str(tmp_path / "y"),
                 "--no-progress"]) == 2
    assert "loci-fast eval" in capsys.readouterr().err
    empty = tmp_path / "empty-000000.tar"
    from loci_fast.data.writer import write_shard

    write_shard(empty, [])
    assert main(base[:4] + [str(empty)] + base[5:]) == 2
    assert "no videos" in capsys.readouterr().err
