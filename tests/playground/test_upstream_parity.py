"""The playground's original-Loci views against upstream's own GUI code (model/scripts/playground.py at
f5a7023), run with its one documented fix (``GPDecoder`` is ``LociDecoder``), matplotlib off-screen and
cv2.imread stubbed to hand over the background
(and jsmin, which its unused config reader imports). Needs LOCI_FAST_UPSTREAM_V1."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from tests.loci_v1.upstream_v1 import ROOT, Namespace, upstream_v1

from .conftest import CONFIGS, playground_args, random_state

pytestmark = pytest.mark.skipif(not ROOT, reason="set LOCI_FAST_UPSTREAM_V1 to upstream Loci (f5a7023)")


def upstream_views(imp, cfg: dict, checkpoint: str, background_bgr: np.ndarray, gestalt, position):
    """Upstream LociPlayground's (composite, slot RGB, mask, position map) as float RGB (H, W, 3)."""
    import matplotlib

    matplotlib.use("Agg")
    sys.modules["cv2"].imread = lambda path: background_bgr.copy()
    imp("nn.decoder").GPDecoder = imp("nn.decoder").LociDecoder  # the rename of 476dade
    playground = imp("model.scripts.playground")
    shown = []
    playground.LociPlayground.add_image = lambda self, ax, img: shown.append(np.asarray(img, dtype=np.float64))
    gui = playground.LociPlayground(Namespace(cfg), "cpu", checkpoint, "background.jpg",
                                    torch.tensor([gestalt]), torch.tensor([position]))
    import matplotlib.pyplot as plt

    plt.close(gui.fig)
    # shown: gestalt grid, position map, then composite, slot RGB, mask (the default panel order)
    return shown[2], shown[3], shown[4], shown[1]


def test_views_match_upstreams_gui(tmp_path, gen, monkeypatch):
    import types

    from PIL import Image

    monkeypatch.setitem(sys.modules, "jsmin", types.ModuleType("jsmin"))  # imported by its config reader, unused

    from loci_fast.config import load_config
    from loci_fast.playground.command import build_server

    cfg = load_config(CONFIGS["loci-v1"]).to_dict()["model"]
    h, w = cfg["input_size"]
    state = random_state("loci-v1", 11)
    torch.save({"model": state}, tmp_path / "net.pt")  # upstream's checkpoint layout
    torch.save(state, tmp_path / "ours.pt")
    bgr = torch.randint(0, 256, (h, w, 3), generator=gen, dtype=torch.uint8).numpy()
    Image.fromarray(bgr[:, :, ::-1].copy()).save(tmp_path / "background.png")  # lossless, RGB
    weights = {"loci-v1": tmp_path / "ours.pt"}
    server = build_server(playground_args("loci-v1", weights, background=tmp_path / "background.png"))
    try:
        for _ in range(3):
            gestalt = (torch.rand(cfg["gestalt_size"], generator=gen) > 0.5).double().tolist()
            position = [*(torch.rand(2, generator=gen) * 2 - 1).tolist(), 0.05 + 0.3 * torch.rand(1, generator=gen).item()]
            with upstream_v1() as imp:
                theirs = upstream_views(imp, cfg, str(tmp_path / "net.pt"), bgr, gestalt, position)
            from loci_fast.playground.latent import SlotLatent

            ours = server.slot.render(SlotLatent(gestalt, position))
            for name, mine, ref in zip(("composite", "rgb", "mask", "position"), ours.items(), theirs):
                assert mine[0] == name and mine[1].shape == (h, w, 3)
                diff = np.abs(mine[1].astype(np.float64) / 255 - ref.clip(0, 1)).max()
                assert diff <= 0.5 / 255 + 1e-4, (name, diff)  # uint8 rounding only
    finally:
        server.server_close()
