"""`loci-fast data convert-hdf5` on a file written in the upstream layout with h5py."""
import io
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from loci_fast.cli import main as cli
from loci_fast.data import iter_videos
from loci_fast.data.convert_hdf5 import convert_hdf5

from .conftest import make_upstream_hdf5


def test_converted_frames_depth_and_masks_match_the_source(tmp_path, upstream_hdf5):
    path, truth = upstream_hdf5
    shards = convert_hdf5(path, tmp_path, shard_videos=1, progress=False, log=lambda s: None)
    assert [p.name for p in shards] == ["test-000000.tar", "test-000001.tar"]
    videos = list(iter_videos(str(tmp_path / "test-{000000..000001}.tar")))
    assert [v["meta"]["num_frames"] for v in videos] == [5, 3]
    img = 0
    for v, seq in zip(videos, truth["sequences"]):
        m = v["meta"]
        assert m["dataset"] == "toy" and m["split"] == "test" and m["has_depth"] and m["depth_unit"] == "normalized"
        for t in range(m["num_frames"]):
            # Frames: exactly a plain decode of the stored JPEG, and within JPEG error of the original.
            decoded = np.asarray(Image.open(io.BytesIO(truth["rgb_jpeg"][img].tobytes())).convert("RGB"))
            np.testing.assert_array_equal(v["rgb"][t], decoded)
            assert np.abs(v["rgb"][t].astype(int) - seq["rgb"][t]).mean() < 3
            np.testing.assert_allclose(v["depth"][t], seq["depth"][t] / 255.0, atol=1e-6)
            n = seq["masks"][t].shape[0]
            np.testing.assert_array_equal(v["instance_masks"][t, :n], seq["masks"][t])
            assert not v["instance_masks"][t, n:].any()  # padding to the video's largest count
            visible = seq["masks"][t] == 255
            expect = np.where(visible.any(0), visible.argmax(0) + 1, 0)
            np.testing.assert_array_equal(v["segmentation"][t], expect)
            img += 1
        assert v["instance_masks"].shape[1] == max(s.shape[0] for s in seq["masks"])


def test_file_without_depth_and_cli(tmp_path):
    src = tmp_path / "nodepth.hdf5"
    make_upstream_hdf5(src, with_depth=False, lengths=(2,))
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "loci_fast.cli", "data", "convert-hdf5", str(src), "--out", str(out),
                          "--no-progress"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    (v,) = list(iter_videos(out))
    assert v["meta"]["has_depth"] is False and v["depth"] is None
    assert v["instance_masks"] is not None and v["meta"]["num_instances"] >= 1


def test_loaders_read_converted_soft_masks_and_missing_depth(tmp_path, upstream_hdf5):
    from loci_fast.data import object_crops, video_chunks
    from loci_fast.data.errors import DataError

    path, truth = upstream_hdf5
    convert_hdf5(path, tmp_path / "d", shard_videos=1, progress=False, log=lambda s: None)
    videos = {v["key"]: v for v in iter_videos(tmp_path / "d")}
    b = next(iter(object_crops(tmp_path / "d", batch_size=4, size=(32, 32), augment=False, training=False)))
    for i in range(4):
        v, t, iid = videos[b["key"][i]], int(b["frame"][i]), int(b["instance"][i])
        np.testing.assert_allclose(b["mask"][i, 0].numpy(), v["instance_masks"][t, iid - 1] / 255.0, atol=1e-6)
        np.testing.assert_allclose(b["depth"][i, 0].numpy(), v["depth"][t], atol=1e-6)  # already in [0, 1]
    assert torch.isclose(b["mask"], torch.tensor(128 / 255)).any()  # amodal 128/255 kept, not binarised
    src = tmp_path / "nodepth.hdf5"
    make_upstream_hdf5(src, with_depth=False, lengths=(4,))
    convert_hdf5(src, tmp_path / "n", progress=False, log=lambda s: None)
    b = next(iter(video_chunks(tmp_path / "n", batch_size=1, sequence_len=4, epoch_batches=1)))
    assert (b["depth"] == -1).all() and not b["use_depth"].any()
    with pytest.raises(DataError, match="fewer frames than sequence_len"):
        next(iter(video_chunks(tmp_path / "n", batch_size=1, sequence_len=9, epoch_batches=1)))


def test_convert_resumes_without_rewriting_finished_shards(tmp_path, upstream_hdf5):
    path, _ = upstream_hdf5
    first = convert_hdf5(path, tmp_path, shard_videos=1, progress=False, log=lambda s: None)
    reference = first[1].read_bytes()
    before = first[0].stat().st_mtime_ns
    first[1].unlink()
    (tmp_path / "test-000001.tar.tmp99").write_bytes(b"half")
    logs = []
    again = convert_hdf5(path, tmp_path, shard_videos=1, progress=False, log=logs.append)
    assert again == first and first[0].stat().st_mtime_ns == before
    assert first[1].read_bytes() == reference and not list(tmp_path.glob("*.tmp*"))
    assert any("1 of 2 shards already" in line for line in logs)


def _edited_copy(tmp_path, upstream_hdf5, edit):
    """A copy of the upstream-layout file with ``edit(h5py.File)`` applied."""
    import shutil

    import h5py

    src, _ = upstream_hdf5
    dst = tmp_path / f"edited-{np.random.default_rng().integers(1 << 30)}.hdf5"
    shutil.copy(src, dst)
    with h5py.File(dst, "a") as f:
        edit(f)
    return dst


@pytest.mark.parametrize("drop", ["instance_masks", "image_instance_indices"])
def test_file_without_instance_masks_warns_naming_file_and_dataset(tmp_path, upstream_hdf5, drop, capsys):
    src = _edited_copy(tmp_path, upstream_hdf5, lambda f: f.__delitem__(drop))
    warned = []
    convert_hdf5(src, tmp_path / "out", progress=False, log=lambda s: None, warn=warned.append)
    assert any(str(src) in w and drop in w and "0 instances" in w for w in warned), warned
    assert all(v["meta"]["num_instances"] == 0 for v in iter_videos(tmp_path / "out"))
    assert cli(["data", "convert-hdf5", str(src), "--out", str(tmp_path / "cli"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"warning: {src}" in err and drop in err, err


def test_masks_that_never_reach_the_threshold_warn(tmp_path, upstream_hdf5):
    def faint(f):
        f["instance_masks"][...] = np.minimum(f["instance_masks"][...], 150)
    src = _edited_copy(tmp_path, upstream_hdf5, faint)
    warned = []
    convert_hdf5(src, tmp_path / "out", progress=False, log=lambda s: None, warn=warned.append)
    assert any(str(src) in w and "instance_masks" in w and "0 instances" in w for w in warned), warned


def _shorten(name, keep):
    def edit(f):
        data, dtype = f[name][:keep], f[name].dtype
        del f[name]
        f.create_dataset(name, data.shape, dtype=dtype)[...] = list(data) if dtype.kind == "O" else data
    return edit


@pytest.mark.parametrize("name, keep", [("depth_images", 5), ("depth_images", 2), ("rgb_images", 6),
                                        ("image_instance_indices", 4), ("instance_masks", 3)])
def test_short_datasets_raise_naming_file_and_dataset(tmp_path, upstream_hdf5, name, keep, capsys):
    from loci_fast.data.errors import DataError

    src = _edited_copy(tmp_path, upstream_hdf5, _shorten(name, keep))
    with pytest.raises(DataError, match=f"{src}.*{name}") as err:
        convert_hdf5(src, tmp_path / "out", progress=False, log=lambda s: None, warn=lambda s: None)
    assert not list((tmp_path / "out").glob("*.tar"))
    assert cli(["data", "convert-hdf5", str(src), "--out", str(tmp_path / "cli"), "--no-progress"]) == 2
    assert capsys.readouterr().err == f"loci-fast data convert-hdf5: error: {err.value}\n"


@pytest.mark.parametrize("content", [b"", b"not hdf5 at all\n" * 50, b"\x89HDF\r\n\x1a\n" + b"\0" * 40],
                         ids=["empty", "text", "signature-only"])
def test_non_hdf5_file_is_named(tmp_path, content, capsys):
    from loci_fast.data.errors import DataError

    src = tmp_path / "movi.hdf5"
    src.write_bytes(content)
    with pytest.raises(DataError, match=f"{src}: not a readable HDF5 file"):
        convert_hdf5(src, tmp_path / "out", progress=False, log=lambda s: None)
    assert cli(["data", "convert-hdf5", str(src), "--out", str(tmp_path / "cli"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"loci-fast data convert-hdf5: error: {src}: not a readable HDF5 file") and \
        err.count("\n") == 1, err
