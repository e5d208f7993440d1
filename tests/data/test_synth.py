"""`loci-fast data synth`: real PyBullet scenes, valid shards, determinism, resume."""
import os
import subprocess
import sys
import tarfile

import numpy as np

from loci_fast.data import iter_videos
from loci_fast.data.inspect import inspect_shards
from loci_fast.data.synth.run import SynthConfig, run_synth, simulate_video

from .conftest import SYNTH


def test_synth_shards_are_valid_tars_with_physical_content(synth_dir, synth_shards):
    assert [os.path.basename(p) for p in synth_shards] == [f"train-{i:06d}.tar" for i in range(4)]
    names = tarfile.open(synth_shards[0]).getnames()
    assert names == sorted(names) and "train_000000.meta.json" in names and "train_000001.rgb.png" in names
    report = inspect_shards([str(synth_dir)], check=True)
    assert report.ok, report.text()
    assert (report.shards, report.videos, report.frames) == (4, 8, 64)
    videos = list(iter_videos(synth_shards))
    assert [v["key"] for v in videos] == [f"train_{i:06d}" for i in range(8)]
    for v in videos:
        m = v["meta"]
        ids = np.unique(v["segmentation"])
        # Instances are exactly the objects seen at least once, numbered 1..K.
        assert set(ids.tolist()) - {0} == set(range(1, m["num_instances"] + 1))
        assert 1 <= m["num_instances"] <= SYNTH["max_objects"]
        assert m["has_depth"] and m["static_camera"] and m["depth_unit"] == "m"
        assert 1.0 < v["depth"].min() and v["depth"].max() <= m["depth_max"]
        # Things fall and move: frames differ over time, but the static background stays put.
        assert not np.array_equal(v["rgb"][0], v["rgb"][-1])
        bg = (v["segmentation"][0] == 0) & (v["segmentation"][-1] == 0)
        assert np.abs(v["depth"][0][bg] - v["depth"][-1][bg]).max() < 1e-3
        # Objects are in front of the floor where they cover it.
        assert v["depth"][0][v["segmentation"][0] > 0].mean() < v["depth"][0][v["segmentation"][0] == 0].mean()


def test_same_seed_same_bytes_any_worker_count_and_resume(tmp_path, synth_shards):
    cfg = SynthConfig(**SYNTH)
    run_synth(tmp_path, 8, cfg, shard_videos=2, workers=2, progress=False, log=lambda s: None)
    for ref in synth_shards:
        assert open(ref, "rb").read() == (tmp_path / os.path.basename(ref)).read_bytes()
    # Interrupted run: one shard lost, a half-written temporary left behind.
    kept = tmp_path / "train-000000.tar"
    before = kept.stat().st_mtime_ns
    (tmp_path / "train-000002.tar").unlink()
    (tmp_path / "train-000002.tar.tmp123").write_bytes(b"partial")
    logs = []
    run_synth(tmp_path, 8, cfg, shard_videos=2, workers=1, progress=False, log=logs.append)
    assert kept.stat().st_mtime_ns == before
    assert not list(tmp_path.glob("*.tmp*"))
    assert (tmp_path / "train-000002.tar").read_bytes() == open(synth_shards[2], "rb").read()
    assert any("resuming" in line for line in logs)


def test_moving_camera_and_seed_change():
    cfg = SynthConfig(frames=4, size=24, min_objects=2, max_objects=3, camera="moving", seed=5)
    a = simulate_video(cfg, 0)
    b = simulate_video(SynthConfig(**{**cfg.__dict__, "seed": 6}), 0)
    assert a["meta"]["static_camera"] is False
    static = simulate_video(SynthConfig(**{**cfg.__dict__, "camera": "static"}), 0)
    for v, lo, hi in ((a, 0.5, 1.0), (static, 0.0, 0.2)):
        # Fraction of floor pixels whose colour changes between the first and the last frame.
        bg = (v["segmentation"][0] == 0) & (v["segmentation"][-1] == 0)
        changed = (v["rgb"][0] != v["rgb"][-1]).any(-1)[bg].mean()
        assert lo <= changed <= hi
    assert not np.array_equal(a["rgb"], b["rgb"])


def test_cli_synth_and_inspect(tmp_path):
    cmd = [sys.executable, "-m", "loci_fast.cli", "data"]
    out = subprocess.run(cmd + ["synth", "--out", str(tmp_path), "--videos", "2", "--frames", "3", "--size", "24",
                                "--seed", "1", "--no-progress"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    res = subprocess.run(cmd + ["inspect", "--check", str(tmp_path)], capture_output=True, text=True)
    assert res.returncode == 0 and "videos: 2" in res.stdout and "every sample decodes" in res.stdout
    data = (tmp_path / "train-000000.tar").read_bytes()
    (tmp_path / "train-000000.tar").write_bytes(data[: len(data) // 2])
    report = inspect_shards(str(tmp_path), check=True)
    assert not report.ok and "train-000000.tar" in report.text() and "truncated" in report.text()


def test_object_size_scales_what_the_camera_sees():
    small = SynthConfig(frames=2, size=48, min_objects=3, max_objects=3, seed=7)
    big = SynthConfig(**{**small.__dict__, "min_object_size": 1.6, "max_object_size": 2.0})
    area = [np.mean([(simulate_video(c, i)["segmentation"][0] > 0).mean() for i in range(3)]) for c in (small, big)]
    assert area[1] > 2.5 * area[0] > 0


def test_bad_object_size_names_the_option():
    import pytest

    with pytest.raises(ValueError, match="--object-size"):
        SynthConfig(min_object_size=1.0, max_object_size=0.5).check()
