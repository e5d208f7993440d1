"""The loci-video encodings round-trip and the validator rejects what breaks the schema."""
import json

import numpy as np
import pytest

from loci_fast.data import codec
from loci_fast.data.errors import SampleError
from loci_fast.data.reader import decode_sample, iter_raw, iter_videos
from loci_fast.data.schema import validate_meta
from loci_fast.data.writer import encode_video, write_shard


def _video(rng, t=4, h=12, w=10, depth=True, masks=False, ids=3):
    seg = rng.integers(0, ids + 1, (t, h, w)).astype(np.uint8)
    v = {"key": "vid_0", "meta": {"dataset": "unit", "split": "train", "num_instances": ids, "static_camera": True,
                                  "source": "test", "depth_unit": "m", "depth_max": 20.0},
         "rgb": rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8),
         "depth": rng.uniform(0, 20, (t, h, w)).astype(np.float32) if depth else None, "segmentation": seg}
    if masks:
        v["instance_masks"] = rng.integers(0, 256, (t, ids, h, w), dtype=np.uint8)
    return v


def test_png_round_trip_is_exact_and_depth_keeps_16_bits(tmp_path, seed):
    rng = np.random.default_rng(seed)
    v = _video(rng, masks=True)
    write_shard(tmp_path / "s-000000.tar", [encode_video(v)])
    (got,) = list(iter_videos(tmp_path / "s-000000.tar"))
    assert got["key"] == "vid_0" and got["rgb"].dtype == np.uint8
    np.testing.assert_array_equal(got["rgb"], v["rgb"])
    np.testing.assert_array_equal(got["segmentation"], v["segmentation"])
    np.testing.assert_array_equal(got["instance_masks"], v["instance_masks"])
    assert got["depth"].dtype == np.float32 and got["depth"].shape == v["depth"].shape
    step = 20.0 / 65535
    assert np.abs(got["depth"] - v["depth"]).max() <= step / 2 + 1e-6
    assert got["meta"]["frame_instances"] == [sorted(set(np.unique(f).tolist()) - {0}) for f in v["segmentation"]]


def test_jpeg_rgb_is_close_and_sixteen_bit_ids(tmp_path, seed):
    rng = np.random.default_rng(seed)
    v = _video(rng, depth=False, ids=300, h=16, w=16)
    v["segmentation"] = v["segmentation"].astype(np.uint16) * 0 + rng.integers(0, 301, (4, 16, 16)).astype(np.uint16)
    v["rgb"] = np.repeat(np.repeat(v["rgb"][:, ::4, ::4], 4, 1), 4, 2)  # blocky: JPEG-friendly
    write_shard(tmp_path / "s-000000.tar", [encode_video(v, rgb_codec="jpg")])
    (got,) = list(iter_videos(str(tmp_path / "s-*.tar")))
    assert got["depth"] is None and not got["meta"]["has_depth"]
    assert np.abs(got["rgb"].astype(int) - v["rgb"]).mean() < 4
    np.testing.assert_array_equal(got["segmentation"], v["segmentation"])


def test_depth_quantisation_clips_and_maps_upstream_8_bit_exactly():
    d8 = np.arange(256, dtype=np.float32).reshape(1, 16, 16) / 255
    back = codec.decode_depth(codec.encode_depth(d8, 1.0), 1, 1.0)
    np.testing.assert_allclose(back, d8, atol=1e-7)
    big = codec.decode_depth(codec.encode_depth(np.array([[[50.0, np.inf]]]), 32.0), 1, 32.0)
    assert big.max() == 32.0


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(version=2), "schema version 2"),
    (lambda m: m.update(format="other"), "not a loci-video shard"),
    (lambda m: m.pop("num_frames"), "lacks num_frames"),
    (lambda m: m.update(has_depth="yes"), "has_depth"),
])
def test_validator_names_the_problem(change, message, seed):
    rng = np.random.default_rng(seed)
    meta = json.loads(encode_video(_video(rng))["meta.json"])
    change(meta)
    with pytest.raises(SampleError, match=message) as err:
        validate_meta(meta, shard="x-000001.tar", key="vid_0")
    assert "x-000001.tar" in str(err.value) and "vid_0" in str(err.value)


def test_missing_member_and_shape_mismatch_are_caught(tmp_path, seed):
    rng = np.random.default_rng(seed)
    sample = encode_video(_video(rng))
    no_depth = {k: v for k, v in sample.items() if k != "depth.png"}
    meta = json.loads(sample["meta.json"])
    meta["height"] = 99
    wrong_shape = {**sample, "__key__": "vid_1", "meta.json": json.dumps(meta).encode()}
    write_shard(tmp_path / "bad-000000.tar", [no_depth, wrong_shape])
    raw = list(iter_raw(str(tmp_path / "bad-000000.tar")))
    with pytest.raises(SampleError, match="depth.png is missing"):
        decode_sample(*raw[0], "bad-000000.tar")
    with pytest.raises(SampleError, match=r"bad-000000.tar.*vid_1.*expected shape"):
        decode_sample(*raw[1], "bad-000000.tar")


def test_writer_rejects_bad_keys_and_arrays(seed):
    rng = np.random.default_rng(seed)
    with pytest.raises(ValueError, match="must not contain"):
        encode_video({**_video(rng), "key": "a.b"})
    v = _video(rng)
    v["rgb"] = v["rgb"][:, :, :, :2]
    with pytest.raises(SampleError, match="rgb"):
        encode_video(v)


def test_brace_fallback_matches_braceexpand():
    from braceexpand import braceexpand

    from loci_fast.data.reader import _braces

    for p in ["a-{000..003}.tar", "x/{a,b}-{1..2}.tar", "{a,{b,c}}z", "plain.tar", "n-{9..11}"]:
        assert _braces(p) == list(braceexpand(p))
