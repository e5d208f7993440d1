"""`loci-fast data convert-cater` on small folders in exactly the layout of the authors' CATER release.

The folders are made here with procedural frames (PIL: a textured floor, cones as triangles and a
small golden snitch drawn where CATER's camera projects them), JPEG-encoded like the release; that
is much cheaper than a PyBullet render and is all the converter sees (file names, sizes, bytes).
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from loci_fast.data import iter_videos
from loci_fast.data.cater import labels as cl
from loci_fast.data.cater.load import iter_cater
from loci_fast.data.convert_cater import convert_cater, split_membership
from loci_fast.data.errors import ParamsMismatch, SampleError, SourceError
from loci_fast.data.inspect import inspect_shards
from loci_fast.data.reader import iter_raw
from loci_fast.data.schema import unpack_frames, validate_meta
from loci_fast.eval.cater import SNITCH_Z, world_to_screen

SIZES = {"320x240": (240, 320), "80x60": (60, 80)}


def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _floor(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    base = np.linspace(90, 170, h)[:, None, None] + rng.normal(0, 6, (h, w, 1))
    return Image.fromarray(np.clip(base + np.array([0, 4, 10]), 0, 255).astype(np.uint8))


def _draw(floor: Image.Image, objects: dict[str, np.ndarray], t: int, hidden: set[str]) -> Image.Image:
    img = floor.copy()
    d = ImageDraw.Draw(img)
    h, w = img.height, img.width
    for name, xyz in objects.items():
        if name in hidden:
            continue
        r, c = world_to_screen(torch.from_numpy(xyz[t:t + 1])).numpy()[0]
        py, px = (r + 1) / 2 * (h - 1), (c + 1) / 2 * (w - 1)
        s = max(1.0, w / 40)
        if name.startswith("Spl"):
            d.ellipse([px - s / 2, py - s / 2, px + s / 2, py + s / 2], fill=(30, 190, 230))  # golden in BGR terms
        else:
            d.polygon([(px, py - 2 * s), (px - s, py + s), (px + s, py + s)], fill=(200, 60, 60))
    return img


def make_scene(rng: np.random.Generator, frames: int) -> tuple[dict, dict[str, np.ndarray], set[str]]:
    """Metadata of one video: a snitch, two cones and a cube; Cone_0 covers the snitch mid-video."""
    start = rng.uniform(-2.8, 2.8, (4, 2))
    end = rng.uniform(-2.8, 2.8, (4, 2))
    names = ["Spl_0", "Cone_0", "Cone_1", "Cube_0"]
    shapes = ["spl", "cone", "cone", "cube"]
    tracks = {}
    for i, n in enumerate(names):
        xy = start[i] + (end[i] - start[i]) * np.linspace(0, 1, frames)[:, None]
        tracks[n] = np.concatenate([xy, np.full((frames, 1), SNITCH_Z if n == "Spl_0" else 0.5)], 1)
    objects = [{"shape": s, "instance": n, "material": "metal", "size": "small", "color": "gold" if s == "spl" else "red",
                "locations": {str(t): tracks[n][t].tolist() for t in range(frames)}} for n, s in zip(names, shapes)]
    a, b = 1 + frames // 4, frames - 1 - frames // 4
    movements = {"Spl_0": [["_slide", None, 0, frames - 1]], "Cone_0": [["_contain", "Spl_0", 0, a],
                                                                        ["_pick_place", None, b, frames - 1]],
                 "Cone_1": [["_slide", None, 0, 2]], "Cube_0": [["_no_op", None, 0, 1]]}
    return {"objects": objects, "movements": movements}, tracks, set()


def make_release(root: Path, videos: int = 4, frames: int = 6, seed: int = 0) -> dict:
    """A CATER-release folder: background.jpg, labels/<video>.json, <video>/train/{320x240,80x60}/frame*.jpg."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    (root / "labels").mkdir()
    floor = _floor(rng, 240, 320)
    (root / "background.jpg").write_bytes(_jpeg(floor, 95))
    truth = {}
    for v in range(videos):
        name = f"{v:06d}"
        meta, tracks, _ = make_scene(rng, frames)
        (root / "labels" / f"{name}.json").write_text(json.dumps(meta))
        files = {}
        for res, (h, w) in SIZES.items():
            folder = root / name / "train" / res
            folder.mkdir(parents=True)
            fl = floor.resize((w, h))
            files[res] = []
            for t in range(frames):
                data = _jpeg(_draw(fl, tracks, t, set()))
                (folder / f"frame{t:04d}.jpg").write_bytes(data)
                files[res].append(data)
        truth[name] = {"files": files, "meta": meta}
    (root / "not-a-video").mkdir()  # ignored: names must start with "0"
    return truth


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("cater") / "CATER"
    return root, make_release(root, videos=5)


@pytest.fixture(scope="module")
def converted(release, tmp_path_factory):
    root, truth = release
    out = tmp_path_factory.mktemp("shards")
    paths = convert_cater(root, out, shard_videos=1, progress=False, log=lambda s: None)
    return out, paths


def test_convert_then_inspect_check_round_trips_frames_byte_for_byte(release, converted):
    root, truth = release
    out, paths = converted
    assert {s: len(p) for s, p in paths.items()} == {"train": 2, "val": 1, "test": 2}  # 5 videos: 56/14/30 %
    rep = inspect_shards(str(out), check=True)
    assert rep.ok, rep.errors
    assert rep.videos == 5 and rep.frames == 30 and dict(rep.datasets) == {"CATER": 5}
    res = subprocess.run([sys.executable, "-m", "loci_fast.cli", "data", "inspect", "--check", str(out)],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert res.returncode == 0 and "every sample decodes and validates" in res.stdout, res.stdout + res.stderr
    seen = []
    for split in ("train", "val", "test"):
        for shard in paths[split]:
            for key, fields in iter_raw(str(shard)):
                seen.append(key)
                meta = validate_meta(json.loads(fields["meta.json"]), shard=str(shard), key=key)
                assert meta["split"] == split and meta["resolutions"] == [[240, 320], [60, 80]]
                assert unpack_frames(fields["rgb.frames"]) == truth[key]["files"]["320x240"]
                assert unpack_frames(fields["rgb_80x60.frames"]) == truth[key]["files"]["80x60"]
                assert fields["labels.json"] == (root / "labels" / f"{key}.json").read_bytes()
    assert seen == sorted(truth)
    assert (out / "background.jpg").read_bytes() == (root / "background.jpg").read_bytes()
    manifest = json.loads((out / "cater-splits.json").read_text())
    assert manifest["splits"] == {"train": seen[:2], "val": seen[2:3], "test": seen[3:]}
    assert manifest["overlaps"] == {} and manifest["unassigned"] == []


def test_generic_reader_and_upstream_style_loader(release, converted):
    root, truth = release
    out, _ = converted
    for v in iter_videos(str(out)):
        want = np.stack([np.asarray(Image.open(io.BytesIO(f)).convert("RGB")) for f in truth[v["key"]]["files"]["320x240"]])
        np.testing.assert_array_equal(v["rgb"], want)
        assert v["segmentation"].shape == want.shape[:3] and not v["segmentation"].any()
        assert json.loads(v["extra"]["labels.json"]) == truth[v["key"]]["meta"]
    bg = np.asarray(Image.open(root / "background.jpg").convert("RGB"))[..., ::-1]
    with pytest.warns(UserWarning, match="OpenCV"):
        items = list(iter_cater(str(out / "test-*.tar"), size=(60, 80)))
    assert len(items) == 2
    item = items[0]
    files = truth[item["key"]]["files"]["80x60"]
    assert item["frames"].shape == (301, 3, 60, 80) and item["num_frames"] == 6
    for t, f in enumerate(files):
        bgr = np.asarray(Image.open(io.BytesIO(f)).convert("RGB"))[..., ::-1].transpose(2, 0, 1)
        np.testing.assert_array_equal(item["frames"][t], bgr.astype(np.float32) / 255)
    assert not item["frames"][6:].any()  # zero padding to 301, as upstream
    assert item["background"].shape == (1, 3, 60, 80)
    full = next(iter_cater(str(out / "test-*.tar")))
    np.testing.assert_array_equal(full["background"][0], bg.transpose(2, 0, 1).astype(np.float32) / 255)
    meta = truth[item["key"]]["meta"]
    np.testing.assert_array_equal(item["snitch_xyz"], cl.snitch_xyz(meta))
    assert item["label"] == cl.final_label(meta)
    assert item["contained"].shape == (301,) and item["contained"].tolist() == cl.snitch_contained(meta).tolist()
    with pytest.raises(SampleError, match="no frames at 100x100"):
        next(iter_cater(str(out / "test-*.tar"), size=(100, 100)))


def _scene(last_xy, movements):
    locs = {str(t): [0.1 * t, -0.1 * t, SNITCH_Z] for t in range(4)}
    locs["4"] = [*last_xy, SNITCH_Z]
    objs = [{"shape": "cube", "instance": "Cube_0", "locations": {"0": [0, 0, 0]}},
            {"shape": "spl", "instance": "Spl_0", "locations": locs},
            {"shape": "cone", "instance": "Cone_0", "locations": {"0": [0, 0, 0]}},
            {"shape": "cone", "instance": "Cone_1", "locations": {"0": [0, 0, 0]}}]
    return {"objects": objs, "movements": movements}


def _hidden(v: np.ndarray) -> list[tuple[int, int]]:
    """Runs [start, end) where a 0/1 track is 1."""
    d = np.diff(np.concatenate([[0], v.astype(int), [0]]))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


@pytest.mark.parametrize("movements, hidden", [
    # hidden from the END of the contain to the START of the next pick-place
    ({"Cone_0": [["_contain", "Spl_0", 30, 40], ["_slide", None, 50, 60], ["_pick_place", None, 100, 120]]},
     [(40, 100)]),
    ({"Cone_0": [["_contain", "Spl_0", 200, 250]]}, [(250, 301)]),           # no pick-place: to the end
    ({"Cone_0": [["_contain", "Spl_0", 0, 0], ["_pick_place", None, 10, 20]]}, []),  # ends at frame 0: ignored
    ({"Cone_0": [["_pick_place", None, 10, 20]]}, []),                         # pick-place alone: nothing
    ({"Cone_1": [["_contain", "Cube_0", 5, 9]], "Cone_0": []}, []),            # another object contained
    ({"Cone_0": [["_contain", "Spl_0", 5, 9], ["_contain", "Spl_0", 20, 30],  # a second contain replaces the first
                 ["_pick_place", None, 60, 70], ["_contain", "Spl_0", 80, 90], ["_pick_place", None, 95, 99]]},
     [(30, 60), (90, 95)]),
    ({"Spl_0": [["_contain", "Cube_0", 5, 9]], "Cone_1": [["_contain", "Spl_0", 3, 7]]}, [(7, 301)]),  # only Cone_*
])
def test_containment_rule_on_hand_built_cases(movements, hidden):
    meta = _scene((0.3, 0.3), movements)
    assert _hidden(cl.snitch_contained(meta)) == hidden
    assert cl.tracks(meta)["contained"] == cl.snitch_contained(meta).astype(int).tolist()


@pytest.mark.parametrize("xy, label", [((0.3, 0.3), 21), ((-0.2, 2.7), 32), ((-3.0, -3.0), 0), ((2.99, -0.01), 17),
                                       ((1.0, -2.0), 6 * 1 + 4)])
def test_final_label_floor_rule(xy, label):
    meta = _scene(xy, {})
    assert cl.final_label(meta) == label
    xyz = cl.snitch_xyz(meta)
    assert xyz.shape == (5, 3) and xyz[-1, :2].tolist() == list(xy) and xyz[2, 0] == pytest.approx(0.2)


def test_split_membership_sorted_and_upstream():
    names = [f"{i:05d}" for i in range(5500)]
    up = split_membership(names, "upstream")
    assert [len(up["splits"][s]) for s in ("train", "val", "test")] == [3080, 770, 1650]
    assert up["overlaps"] == {"03849": ["val", "test"]} and up["unassigned"] == ["05499"]
    srt = split_membership(names[::-1], "upstream")  # upstream mode keeps the order it is given
    assert srt["splits"]["train"][0] == "05499"
    for n in (5500, 7, 101):
        m = split_membership(names[:n], "sorted")
        joined = m["splits"]["train"] + m["splits"]["val"] + m["splits"]["test"]
        assert joined == names[:n] and not m["overlaps"] and not m["unassigned"]
        assert len(m["splits"]["train"]) == n * 56 // 100


def _convert_error(root: Path, tmp_path: Path, match: str) -> SourceError:
    with pytest.raises(SourceError, match=match) as err:
        convert_cater(root, tmp_path / "out", shard_videos=1, progress=False, log=lambda s: None)
    return err.value


def test_bad_or_missing_inputs_are_named_with_the_fix(tmp_path):
    root = tmp_path / "CATER"
    make_release(root, videos=3, frames=3, seed=1)
    bg = (root / "background.jpg").read_bytes()
    (root / "background.jpg").unlink()
    e = _convert_error(root, tmp_path, "background.jpg: missing")
    assert "Copy background.jpg" in str(e)
    (root / "background.jpg").write_bytes(bg[: len(bg) // 3])
    _convert_error(root, tmp_path, "background.jpg: does not decode")
    (root / "background.jpg").write_bytes(bg)

    frame = root / "000001" / "train" / "80x60" / "frame0001.jpg"
    good = frame.read_bytes()
    frame.write_bytes(good[:-40])
    e = _convert_error(root, tmp_path, "frame0001.jpg: truncated JPEG")
    assert "Re-extract" in str(e)
    frame.write_bytes(_jpeg(Image.new("RGB", (81, 60))))
    _convert_error(root, tmp_path, "is 81x60, but its folder is 80x60")
    frame.unlink()
    _convert_error(root, tmp_path, "different numbers of frames")
    frame.write_bytes(good)

    lab = root / "labels" / "000002.json"
    text = lab.read_text()
    lab.write_text(text.replace('"spl"', '"sphere"'))
    _convert_error(root, tmp_path, r"000002.json: not usable CATER metadata \(no object with shape 'spl'")
    lab.unlink()
    e = _convert_error(root, tmp_path, "000002.json: missing")
    assert "Copy labels/000002.json" in str(e)
    lab.write_text(text)

    res = subprocess.run([sys.executable, "-m", "loci_fast.cli", "data", "convert-cater", str(root), "--out",
                          str(tmp_path / "out2"), "--resolutions", "320x240", "64x48", "--no-progress"],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert res.returncode == 2 and "64x48: missing" in res.stderr and "Traceback" not in res.stderr


def test_resume_keeps_shards_refuses_other_parameters_and_workers_agree(tmp_path):
    root = tmp_path / "CATER"
    make_release(root, videos=5, frames=3, seed=2)
    out = tmp_path / "out"
    paths = convert_cater(root, out, shard_videos=2, progress=False, log=lambda s: None)
    first = paths["train"][0]
    stamp = first.stat().st_mtime_ns
    blobs = {p.name: p.read_bytes() for ps in paths.values() for p in ps}
    paths["test"][0].unlink()
    logs = []
    convert_cater(root, out, shard_videos=2, progress=False, log=logs.append)
    assert first.stat().st_mtime_ns == stamp and any("train: 1 of 1 shards already" in m for m in logs)
    assert {p.name: p.read_bytes() for ps in paths.values() for p in ps} == blobs
    with pytest.raises(ParamsMismatch, match="--shard-videos 2 there, 3 now"):
        convert_cater(root, out, shard_videos=3, progress=False, log=lambda s: None)
    out2 = tmp_path / "out2"
    paths2 = convert_cater(root, out2, shard_videos=2, workers=2, progress=False, log=lambda s: None)
    assert {p.name: p.read_bytes() for ps in paths2.values() for p in ps} == blobs  # byte-equal shards
