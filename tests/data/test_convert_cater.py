"""`loci-fast data convert-cater` on small folders in exactly the layout of the authors' CATER release.

The folders are made by ``loci_fast.data.cater.synth`` (procedural PIL frames: a textured floor,
cones, cubes and a small golden snitch drawn where CATER's camera projects them, JPEG files as in
the release); that is much cheaper than a PyBullet render and is all the converter sees.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loci_fast.data import iter_videos
from loci_fast.data.cater import labels as cl
from loci_fast.data.cater import load as cater_load
from loci_fast.data.cater.load import iter_cater
from loci_fast.data.cater.synth import make_release as synth_release
from loci_fast.data.convert_cater import convert_cater, split_membership
from loci_fast.data.errors import ParamsMismatch, SampleError, SourceError
from loci_fast.data.inspect import inspect_shards
from loci_fast.data.reader import iter_raw
from loci_fast.data.schema import unpack_frames, validate_meta
from loci_fast.eval.cater import SNITCH_Z

try:
    import cv2
except ImportError:
    cv2 = None

SIZES = {"320x240": (240, 320), "80x60": (60, 80)}


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def expected_bgr(data: bytes) -> np.ndarray:
    """Upstream's decode (OpenCV IMREAD_COLOR) when OpenCV is installed, else PIL's pixels in BGR order."""
    if cv2 is not None:
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))[..., ::-1]


def make_release(root: Path, videos: int = 4, frames: int = 6, seed: int = 0) -> dict:
    """The release-layout folder (``cater.synth``) plus what is on disk: {video: {files, meta}}."""
    synth_release(root, videos, frames, seed=seed)
    (root / "not-a-video").mkdir()  # ignored: video folders start with "0"
    truth = {}
    for d in sorted(p for p in root.iterdir() if p.name.startswith("0")):
        files = {res: [f.read_bytes() for f in sorted((d / "train" / res).iterdir())] for res in SIZES}
        truth[d.name] = {"files": files, "meta": json.loads((root / "labels" / f"{d.name}.json").read_text())}
    assert len(truth) == videos and all(len(t["files"][r]) == frames for t in truth.values() for r in SIZES)
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
    bg = expected_bgr((root / "background.jpg").read_bytes())
    cater_load._warned.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = list(iter_cater(str(out / "test-*.tar"), size=(60, 80)))
    assert any("OpenCV" in str(w.message) for w in caught) == (cv2 is None)  # PIL fallback is announced
    assert len(items) == 2
    item = items[0]
    files = truth[item["key"]]["files"]["80x60"]
    assert item["frames"].shape == (301, 3, 60, 80) and item["num_frames"] == 6
    for t, f in enumerate(files):
        bgr = expected_bgr(f).transpose(2, 0, 1)
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
    tr = cl.tracks(meta)
    assert tr["contained"] == cl.snitch_contained(meta).astype(int).tolist()
    assert tr["visible"]["Spl_0"] == [1 - c for c in tr["contained"]] and len(tr["visible"]) == 4
    cube_hidden = _hidden(1 - np.array(tr["visible"]["Cube_0"]))
    assert cube_hidden == ([(9, 301)] if "Cone_1" in movements and movements["Cone_1"][0][1] == "Cube_0" else [])


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


def _cater_meta(converted) -> tuple[dict, dict[str, bytes], str]:
    out, paths = converted
    shard = str(paths["train"][0])
    key, fields = next(iter_raw(shard))
    return json.loads(fields["meta.json"]), fields, shard


@pytest.mark.parametrize("change, match", [
    ({"rgb_layout": "tiles"}, "rgb_layout"),
    ({"resolutions": [[60, 80], [240, 320]]}, "resolutions"),
    ({"resolutions": "240x320"}, "resolutions"),
    ({"has_segmentation": "no"}, "has_segmentation"),
    ({"num_instances": 2}, "has_segmentation is false but instances"),
    ({"extra_members": ["meta.json"]}, "extra_members"),
])
def test_schema_extension_rejects_bad_meta(converted, change, match):
    meta, _, shard = _cater_meta(converted)
    validate_meta(dict(meta), shard=shard, key="k")
    with pytest.raises(SampleError, match=match):
        validate_meta({**meta, **change}, shard=shard, key="k")


def test_schema_extension_members_and_damaged_container(converted, tmp_path):
    from loci_fast.data.reader import decode_sample, parse_meta
    from loci_fast.data.schema import pack_frames
    from loci_fast.data.writer import write_shard

    meta, fields, shard = _cater_meta(converted)
    for name in ("rgb_80x60.frames", "labels.json", "segmentation.png", "rgb.png"):
        broken = dict(fields)
        if name in broken:
            del broken[name]
        else:
            broken[name] = b"x"
        with pytest.raises(SampleError, match=name.replace(".", r"\.")):
            parse_meta("k", broken, shard)
    stacked = {k: v for k, v in meta.items() if k not in ("rgb_layout", "resolutions", "has_segmentation",
                                                          "extra_members")}
    validate_meta(stacked, shard=shard, key="k")  # a v1 meta without the extension keys is unchanged
    files = unpack_frames(fields["rgb.frames"])
    assert pack_frames(files) == fields["rgb.frames"]
    for bad, why in [(fields["rgb.frames"][:-5], "header says"), (b"XX" + fields["rgb.frames"][2:], "magic"),
                     (pack_frames(files[:-1]), "holds 5 frames"),
                     (pack_frames(files[:-1] + [files[-1][:200]]), "does not decode")]:
        with pytest.raises(SampleError, match=why):
            decode_sample("k", {**fields, "rgb.frames": bad}, shard)
    write_shard(tmp_path / "bad-000000.tar", [{"__key__": "v0", **fields, "rgb.frames": fields["rgb.frames"][:-5]}])
    rep = inspect_shards(str(tmp_path / "bad-000000.tar"), check=True)
    assert not rep.ok and "header says" in rep.errors[0] and "'v0'" in rep.errors[0]


def test_synth_cater_cli_then_convert_cater_cli(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    rel, out = tmp_path / "rel", tmp_path / "shards"
    res = subprocess.run([sys.executable, "-m", "loci_fast.cli", "data", "synth", "--cater", "--out", str(rel),
                          "--videos", "3", "--frames", "4", "--seed", "7"], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    res = subprocess.run([sys.executable, "-m", "loci_fast.cli", "data", "convert-cater", str(rel), "--out", str(out),
                          "--split", "upstream", "--no-progress"], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    # 3 videos, upstream bounds: train [0, 1), val [1, 1), test [2, 2): videos 1 and 2 are in no split
    manifest = json.loads((out / "cater-splits.json").read_text())
    assert manifest["split_mode"] == "upstream" and len(manifest["unassigned"]) == 2
    assert "in none" in res.stderr
    (v,) = list(iter_cater(str(out / "train-*.tar")))
    meta = json.loads((rel / "labels" / f"{v['key']}.json").read_text())
    assert v["contained"].tolist() == cl.snitch_contained(meta).tolist() and v["contained"][:4].tolist() == [0, 0, 1, 0]
    # the snitch is drawn (gold) where visible, not while the cone covers it
    bgr = v["frames"][:4]
    gold = (np.abs(bgr[:, 2] - 212 / 255) < 0.12) & (np.abs(bgr[:, 1] - 175 / 255) < 0.12) & (bgr[:, 0] < 0.4)
    assert gold[0].any() and gold[1].any() and not gold[2].any()


def _keys_cubic_reference(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Float64 separable Keys-cubic (a = -0.75) resampling with pixel-centre alignment and replicated
    borders, the definition of OpenCV's INTER_CUBIC, written independently and unrounded."""
    def matrix(dst, src):
        m = np.zeros((dst, src))
        for i in range(dst):
            f = (i + 0.5) * src / dst - 0.5
            s = int(np.floor(f))
            for k in range(-1, 3):
                d = abs(f - (s + k))
                wgt = (1.25 * d - 2.25) * d * d + 1 if d <= 1 else ((-0.75 * d + 3.75) * d - 6) * d + 3
                m[i, min(max(s + k, 0), src - 1)] += wgt
        return m
    mh, mw = matrix(h, img.shape[0]), matrix(w, img.shape[1])
    return np.stack([mh @ img[..., c].astype(np.float64) @ mw.T for c in range(img.shape[2])], -1)


@pytest.mark.parametrize("shape, size", [((240, 320), (60, 80)), ((24, 32), (12, 16)), ((30, 26), (11, 17)),
                                         ((9, 12), (20, 30))])
def test_background_resize_is_opencv_cubic(shape, size):
    rng = np.random.default_rng(sum(shape) + sum(size))
    img = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    ours = cater_load.resize_cubic_numpy(img, size)
    ref = _keys_cubic_reference(img, *size)
    assert ours.shape == (*size, 3)
    assert np.abs(ours - np.clip(ref, 0, 255)).max() <= 1.01  # fixed-point weights: at most one level
    if cv2 is not None:  # OpenCV itself: equal for CATER's 4x downscale, one level at most elsewhere
        theirs = cv2.resize(img, size[::-1], interpolation=cv2.INTER_CUBIC).astype(int)
        diff = np.abs(theirs - ours)
        assert (diff.max() == 0) if shape == (240, 320) else diff.max() <= 1
