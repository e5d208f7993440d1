"""`loci-fast viz` on a tiny original-Loci (loci-v1) model and CATER shards: the §4.2 views in correct
colours, one GIF frame per step, latents equal to the model's, and the index."""
from __future__ import annotations

import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from loci_fast.cli import main
from loci_fast.viz.cater import OBJ_MARGIN
from loci_fast.viz.latents import read_latents
from tests.viz.helpers import cater_config, cater_shards, is_red, page_links, v1_weights

SCALE = 0.25  # 240x320 input -> pictures composed at 60x80, the level-1 frame size


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("viz-cater")
    shards = cater_shards(tmp)
    config = cater_config(tmp / "cater.json")
    weights = v1_weights(tmp / "v1.safetensors", config)
    out = tmp / "out"
    assert main(["viz", "--checkpoint", str(weights), "--config", str(config), "--data", str(shards),
                 "--count", "1", "--out", str(out), "--scale", str(SCALE), "--seed", "5", "--no-progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    return {"out": out, "shards": shards, "config": config, "weights": weights, "manifest": manifest,
            "video": out / manifest["videos"][0]["folder"]}


def test_steps_views_and_panels(rendered):
    video = rendered["manifest"]["videos"][0]
    assert rendered["manifest"]["kind"] == "loci-v1"
    assert video["times"] == [-2, -1, 0, 1]  # teacher_forcing 2 warm-up steps on frame 0, then 3 frames
    folder = rendered["video"]
    for view in ("objects", "nice"):
        assert [p.name for p in sorted((folder / view).glob("*.png"))] == [f"step-{i:03d}.png" for i in range(4)]
    objects = np.asarray(Image.open(folder / "objects" / "step-000.png"))
    h, w, cols = 60, 80, 2  # 3 slots -> ceil(3/2) columns
    assert objects.shape == (4 * h + 3 * OBJ_MARGIN, 4 * w + 2 * OBJ_MARGIN + cols * w + 6 * (cols + 1), 3)
    nice = np.asarray(Image.open(folder / "nice" / "step-000.png"))
    assert nice.shape == (2 * h + 30, 2 * w + 30, 3)
    panels = {p.name for p in (folder / "panels" / "step-003").glob("*.png")}
    assert {"input.png", "background.png", "bg_error.png", "position.png", "output.png", "highlighted.png",
            "error.png", "slot0_mask.png", "slot2_object.png", "bg_mask.png", "bg_object.png"} <= panels


def test_red_frame_pixel_is_red_in_the_views_and_the_gif(rendered):
    # frame 1 carries a red square (rows 20-40, cols 30-50 at 60x80); step 3 (t = 1) shows it as input
    folder = rendered["video"]
    objects = np.asarray(Image.open(folder / "objects" / "step-003.png").convert("RGB"))
    assert is_red(objects[OBJ_MARGIN + 2 * 30, OBJ_MARGIN + 2 * 40])  # the 2x input panel
    panel = np.asarray(Image.open(folder / "panels" / "step-003" / "input.png").convert("RGB"))
    assert is_red(panel[30, 40]) and not is_red(panel[5, 5])
    earlier = np.asarray(Image.open(folder / "panels" / "step-002" / "input.png").convert("RGB"))
    assert not is_red(earlier[30, 40])  # frame 0 has no red square
    frames = iio.imread(folder / "animation.gif", index=None)
    assert frames.shape[0] == 4 and is_red(frames[3][OBJ_MARGIN + 60, OBJ_MARGIN + 80])


def test_latents_equal_the_models_outputs(rendered):
    from loci_fast.data.cater.load import iter_cater
    from loci_fast.viz.rendering import load_viz_model

    tensors, meta = read_latents(rendered["video"] / "latents.safetensors")
    assert meta["kind"] == "loci-v1" and meta["position_fields"] == ["row", "col", "size"]
    model, cfg, kind = load_viz_model(rendered["weights"], str(rendered["config"]))
    assert kind == "loci-v1"
    video = next(iter_cater(sorted(rendered["shards"].glob("*.tar")), size=(60, 80)))
    frames, bg = torch.from_numpy(video["frames"][:3]), torch.from_numpy(video["background"])
    torch.manual_seed(5)
    state, error = None, None
    with torch.no_grad():
        for i, t in enumerate(range(-2, 2)):
            inp, target = frames[max(t, 0)][None], frames[0 if t < 0 else t + 1][None]
            out, state = model.step(inp, bg, state, error, evaluate=True)
            rms = lambda x: torch.sqrt((x ** 2).mean(1, keepdim=True))  # noqa: E731
            error = torch.sqrt(rms(target - out.output)) * rms(target - out.background)
            assert torch.equal(tensors["position"][i], out.position.reshape(3, 3))
            assert torch.equal(tensors["gestalt"][i], out.gestalt.reshape(3, -1))
            assert torch.equal(tensors["snitch"][i], out.snitch[0])
    assert tensors["gestalt_bits"].dtype == torch.uint8 and set(tensors["gestalt_bits"].unique().tolist()) <= {0, 1}


def test_index_links_exist(rendered):
    out = rendered["out"]
    links = page_links(out / "index.html")
    assert all((out / link).exists() for link in links)
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} - {"index.html"}
    assert written == set(links)


def test_mode_is_refused_for_the_original_loci(rendered, tmp_path, capsys):
    assert main(["viz", "--checkpoint", str(rendered["weights"]), "--config", str(rendered["config"]), "--data",
                 str(rendered["shards"]), "--out", str(tmp_path), "--mode", "random", "--no-progress"]) == 2
    assert "drop --mode" in capsys.readouterr().err
    assert main(["viz", "--checkpoint", str(rendered["weights"]), "--data", str(rendered["shards"]), "--out",
                 str(tmp_path), "--no-progress"]) == 2
    assert "pass --config" in capsys.readouterr().err


def test_non_cater_shards_are_refused_with_the_fix(rendered, tmp_path, capsys):
    from tests.viz.helpers import loci_shard

    shard = loci_shard(tmp_path / "data", frames=2)
    assert main(["viz", "--checkpoint", str(rendered["weights"]), "--config", str(rendered["config"]), "--data",
                 str(shard), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "not a CATER sample" in err and "convert-cater" in err
