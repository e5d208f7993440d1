"""The playground's HTTP API over real tiny decoders: the page and its assets, decoding, changes that must
show in the images, and bad requests answered 400 with a message."""
from __future__ import annotations

import json

import numpy as np
import pytest

from .conftest import CONFIGS, Running, playground_args


def slot_and_latent(running: Running) -> tuple[dict, dict]:
    status, body = running.get("/api/slot")
    assert status == 200
    data = json.loads(body)
    return data["slot"], data["latent"]


def test_binds_loopback_by_default(weights):
    args = playground_args("loci-v1", weights)
    assert args.host == "127.0.0.1" and args.port == 0
    from loci_fast.playground.command import build_server

    server = build_server(args)
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1" and port > 0
    finally:
        server.server_close()


def test_page_and_assets_are_served_without_external_references(running):
    status, page = running.get("/")
    assert status == 200 and b"<script src=\"/static/playground.js\">" in page
    for name in ("playground.js", "playground.css"):
        status, body = running.get(f"/static/{name}")
        assert status == 200 and len(body) > 100
        assert b"http://" not in body and b"https://" not in body  # no CDN, nothing fetched from elsewhere
    assert running.get("/static/../server.py")[0] == 404
    assert running.get("/nothing")[0] == 404


def test_layout_matches_the_model(running):
    slot, latent = slot_and_latent(running)
    if slot["kind"] == "loci-v1":  # tiny cater config: gestalt 8, level 2 at 32x48
        assert slot["groups"] == [["gestalt", 8]] and slot["image_size"] == [32, 48]
        assert latent == {"gestalt": [0.0] * 8, "position": [0.0, 0.0, 0.05]}
    else:  # tiny loci-s: gestalt 32 per code, then z_scale; 64x64
        assert slot["groups"] == [["mask", 32], ["depth", 32], ["rgb", 32]] and slot["image_size"] == [64, 64]
        assert slot["gestalt_size"] == 97 and len(latent["position"]) == 4
        assert slot["labels"] == {"gestalt": {"96": "z_scale"}, "position": {"2": "depth z"}}


def test_decode_gives_four_images_and_flipped_bits_change_them(running):
    slot, latent = slot_and_latent(running)
    h, w = slot["image_size"]
    before = running.decode(latent)
    assert sorted(before) == ["composite", "mask", "position", "rgb"]
    assert all(image.shape == (h, w, 3) for image in before.values())
    assert np.array_equal(running.decode(latent)["composite"], before["composite"])  # deterministic

    changed, bits = 0, sum(n for _, n in slot["groups"])
    for index in range(0, bits, max(1, bits // 12)):  # a dozen bits spread over every group
        flipped = {"gestalt": list(latent["gestalt"]), "position": latent["position"]}
        flipped["gestalt"][index] = 1.0
        after = running.decode(flipped)
        assert np.array_equal(after["position"], before["position"])  # bits do not move the slot
        changed += not np.array_equal(after["composite"], before["composite"])
    assert changed >= 3  # several bits, not one lucky index, reach the image


def test_moving_and_resizing_change_the_position_map_where_clicked(running):
    slot, latent = slot_and_latent(running)
    axes, (h, w) = slot["axes"], slot["image_size"]
    latent["gestalt"] = [1.0 if i % 2 else 0.0 for i in range(len(latent["gestalt"]))]
    latent["position"][axes["size"]] = 0.3
    centre = running.decode(latent)
    moved = dict(latent, position=list(latent["position"]))
    moved["position"][axes["row"]], moved["position"][axes["col"]] = -1.0, 1.0  # top right
    corner = running.decode(moved)
    assert not np.array_equal(corner["composite"], centre["composite"])
    peak = np.unravel_index(corner["position"][..., 0].argmax(), (h, w))
    assert peak == (0, w - 1)
    assert np.unravel_index(centre["position"][..., 0].argmax(), (h, w)) in {
        (r, c) for r in ((h - 1) // 2, h // 2) for c in ((w - 1) // 2, w // 2)}
    bigger = dict(latent, position=list(latent["position"]))
    bigger["position"][axes["size"]] = 0.45
    spread = running.decode(bigger)["position"][..., 0].astype(int).sum()
    assert spread > centre["position"][..., 0].astype(int).sum()


@pytest.fixture(scope="module")
def v1_server(weights):
    from loci_fast.playground.command import build_server

    running = Running(build_server(playground_args("loci-v1", weights)))
    yield running
    running.stop()


@pytest.mark.parametrize("body, problem", [
    (b"not json", "not JSON"),
    (b'{"gestalt": [0]}', '"gestalt" and "position"'),
    (b'{"gestalt": [0, 1], "position": [0, 0, 0.1]}', "'gestalt' has 2 values"),
    (b'{"gestalt": "0101", "position": [0, 0, 0.1]}', "list of"),
    (b'{"gestalt": [0, 0, 0, 0, 0, 0, 0, NaN], "position": [0, 0, 0.1]}', "non-finite"),
])
def test_bad_requests_get_400_with_a_message(v1_server, body, problem):
    status, answer = v1_server.post("/api/decode", body)
    assert status == 400 and problem in answer["error"]
    status, answer = v1_server.post("/api/nowhere", b"{}")
    assert status == 404 and "/api/decode" in answer["error"]
    ok, _ = v1_server.post("/api/decode", json.dumps({"gestalt": [0] * 8, "position": [0, 0, 0.1]}).encode())
    assert ok == 200  # a bad request leaves the server working


def test_cli_errors_name_the_problem(weights, tmp_path, capsys):
    import torch

    from loci_fast.cli import main

    assert main(["playground", "--checkpoint", str(weights["loci-v1"])]) == 2
    assert "pass --config" in capsys.readouterr().err
    torch.save({"encoder.w": torch.zeros(2)}, tmp_path / "enc.pt")
    assert main(["playground", "--config", str(CONFIGS["loci-v1"]), "--checkpoint", str(tmp_path / "enc.pt")]) == 2
    assert "no decoder weights" in capsys.readouterr().err
    assert main(["playground", "--config", str(CONFIGS["loci-s"]), "--checkpoint", str(weights["loci-v1"])]) == 2
    assert "do not fit the config" in capsys.readouterr().err
    assert main(["playground", "--config", str(CONFIGS["loci-v1"]), "--checkpoint", str(weights["loci-v1"]),
                 "--background", str(tmp_path / "none.jpg")]) == 2
    assert "no such image file" in capsys.readouterr().err


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_background_image_is_resized_and_shows_only_in_the_composite(kind, weights, tmp_path):
    from PIL import Image

    from loci_fast.playground.command import build_server

    views = {}
    for colour in ("black", "white"):
        path = tmp_path / f"{colour}.jpg"
        Image.new("RGB", (320, 240), colour).save(path)  # CATER's size, not the tiny model's
        running = Running(build_server(playground_args(kind, weights, background=path)))
        try:
            views[colour] = running.decode(json.loads(running.get("/api/slot")[1])["latent"])
        finally:
            running.stop()
    assert np.array_equal(views["black"]["rgb"], views["white"]["rgb"])
    assert np.array_equal(views["black"]["mask"], views["white"]["mask"])
    # composite = m * slot + (1 - m) * background: white lifts every pixel the slot does not cover fully
    lift = views["white"]["composite"].astype(int) - views["black"]["composite"].astype(int)
    coverage = views["black"]["mask"][..., 0].astype(float) / 255  # the mask view's red channel is m
    assert (lift >= 0).all() and np.allclose(lift.mean(axis=2) / 255, 1 - coverage, atol=0.02)


def test_empty_or_oversized_bodies_get_400(v1_server):
    import http.client
    from urllib.parse import urlparse

    from loci_fast.playground.server import MAX_BODY

    where = urlparse(v1_server.url)
    for length in ("0", str(MAX_BODY + 1), "many"):
        conn = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
        try:
            conn.putrequest("POST", "/api/decode")
            conn.putheader("Content-Length", length)
            conn.endheaders()
            response = conn.getresponse()
            assert response.status == 400 and "Content-Length" in json.loads(response.read())["error"]
        finally:
            conn.close()
