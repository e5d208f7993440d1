"""Tiny original-Loci and Loci-s weights on disk, and a running playground server over them."""
from __future__ import annotations

import argparse
import base64
import io
import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
CONFIGS = {"loci-v1": REPO / "configs/tiny/cater-stage3.json", "loci-s": REPO / "configs/tiny/loci-s.json"}


def random_state(kind: str, seed: int) -> dict[str, torch.Tensor]:
    """A model state dict with every residual gate opened (alpha = 1), so each input bit and the position
    reach the decoded images (the near-zero initial gates would hide most of the decoder)."""
    from loci_fast.config import load_config

    torch.manual_seed(seed)
    cfg = load_config(CONFIGS[kind])
    if kind == "loci-v1":
        from loci_fast.loci_v1.loci import LociV1

        state = LociV1.from_config(cfg["model"]).state_dict()
        state["background.mask"] = torch.randn_like(state["background.mask"])
    else:
        from loci_fast.model.decoder import LociDecoder

        state = {f"decoder.{k}": v for k, v in LociDecoder.from_config(cfg["model"], num_slots=1).state_dict().items()}
    return {k: (torch.ones_like(v) if k.endswith("alpha") else v).contiguous() for k, v in state.items()}


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> dict[str, Path]:
    """kind -> a tensor-only torch file of random weights (what import-upstream writes)."""
    folder = tmp_path_factory.mktemp("playground-weights")
    out = {}
    for i, kind in enumerate(CONFIGS):
        out[kind] = folder / f"{kind}.pt"
        torch.save(random_state(kind, 1000 + i), out[kind])
    return out


def playground_args(kind: str, weights: dict[str, Path], **extra) -> argparse.Namespace:
    from loci_fast.cli import build_parser

    argv = ["playground", "--config", str(CONFIGS[kind]), "--checkpoint", str(weights[kind])]
    for key, value in extra.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return build_parser().parse_args(argv)


class Running:
    """A started server and a small client for its API."""

    def __init__(self, server) -> None:
        self.server, self.url = server, server.url
        self.thread = threading.Thread(target=server.serve_forever, daemon=True)
        self.thread.start()

    def get(self, path: str) -> tuple[int, bytes]:
        return self.request(urllib.request.Request(self.url + path.lstrip("/")))

    def post(self, path: str, body: bytes, content_type: str = "application/json") -> tuple[int, dict]:
        req = urllib.request.Request(self.url + path.lstrip("/"), data=body, method="POST",
                                     headers={"Content-Type": content_type})
        status, data = self.request(req)
        return status, json.loads(data)

    def decode(self, latent: dict) -> dict[str, np.ndarray]:
        status, answer = self.post("/api/decode", json.dumps(latent).encode())
        assert status == 200, answer
        return {name: data_url_image(url) for name, url in answer["images"].items()}

    @staticmethod
    def request(req) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def data_url_image(url: str) -> np.ndarray:
    """A PNG data URL -> (H, W, 3) uint8."""
    from PIL import Image

    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    with Image.open(io.BytesIO(base64.b64decode(url[len(prefix):]))) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


@pytest.fixture(params=sorted(CONFIGS))
def running(request, weights):
    """A playground server for each model kind, on a free port of 127.0.0.1."""
    from loci_fast.playground.command import build_server

    server = build_server(playground_args(request.param, weights))
    run = Running(server)
    yield run
    run.stop()
