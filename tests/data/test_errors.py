"""Bad shards fail loudly, naming the shard (and the sample); on_error="skip" skips and counts."""
import json
import shutil
import tarfile

import pytest

from loci_fast.data import ReadStats, iter_videos, object_crops, video_chunks
from loci_fast.data.errors import DataError, SampleError, ShardError
from loci_fast.data.reader import iter_raw
from loci_fast.data.writer import write_shard


def _last_sample_offset(path) -> int:
    """Byte offset of the header of the last sample's first member."""
    with tarfile.open(path) as tf:
        members = tf.getmembers()
    last_key = members[-1].name.split(".")[0]
    return next(m.offset for m in members if m.name.split(".")[0] == last_key)


def _damaged(tmp_path, src, kind):
    dst = tmp_path / f"{kind}-000000.tar"
    data = open(src, "rb").read()
    if kind == "truncated":
        dst.write_bytes(data[: len(data) * 3 // 4])
    elif kind == "cut-at-sample":  # whole samples and the end marker gone: tarfile alone stops silently
        dst.write_bytes(data[: _last_sample_offset(src)])
    elif kind == "corrupt":
        off = _last_sample_offset(src)
        dst.write_bytes(data[:off] + b"\x7f" * 512 + data[off + 512:])
    elif kind == "not-a-tar":
        dst.write_bytes(b"this is not a tar file" * 100)
    return dst


@pytest.mark.parametrize("kind", ["truncated", "cut-at-sample", "corrupt", "not-a-tar"])
def test_damaged_shards_raise_naming_the_shard(tmp_path, synth_shards, kind):
    bad = _damaged(tmp_path, synth_shards[0], kind)
    with pytest.raises(ShardError, match=f"{bad.name}.*(truncated|corrupt|not a readable tar)"):
        list(iter_videos(str(bad)))
    # Inside DataLoader worker processes (no metadata scan first: epoch_batches is given).
    with pytest.raises(ShardError, match=bad.name):
        list(iter(object_crops([str(bad)], batch_size=2, size=(32, 32), epoch_batches=50, num_workers=2)))


def test_missing_shard_and_empty_glob(tmp_path, synth_shards):
    missing = tmp_path / "gone-000003.tar"
    with pytest.raises(ShardError, match="gone-000003.tar: the file does not exist"):
        list(iter_videos([synth_shards[0], str(missing)]))
    with pytest.raises(ShardError, match="gone-000003.tar"):
        video_chunks([str(missing)], batch_size=1, sequence_len=8)
    with pytest.raises(ShardError, match="matches no file"):
        list(iter_videos(str(tmp_path / "nothing-*.tar")))


def _rewrite(src, dst, edit):
    samples = []
    for key, fields in iter_raw(src):
        sample = {"__key__": key, **fields}
        edit(key, sample)
        samples.append(sample)
    write_shard(dst, samples)


def test_bad_samples_raise_with_key_or_are_skipped_and_counted(tmp_path, synth_shards):
    bad = tmp_path / "bad-000000.tar"

    def edit(key, sample):
        if key.endswith("0"):  # first sample: wrong schema version
            meta = json.loads(sample["meta.json"])
            meta["version"] = 7
            sample["meta.json"] = json.dumps(meta).encode()
        else:  # second sample: a missing field
            del sample["segmentation.png"]

    _rewrite(synth_shards[0], bad, edit)
    with pytest.raises(SampleError, match=r"bad-000000.tar, sample 'train_000000': schema version 7"):
        list(iter_videos(str(bad)))
    stats = ReadStats()
    with pytest.warns(UserWarning, match="no segmentation.png"):
        good = list(iter_videos([str(bad), synth_shards[1]], on_error="skip", stats=stats))
    assert [v["key"] for v in good] == ["train_000002", "train_000003"]
    assert stats.skipped_samples == 2 and any("train_000001" in m for m in stats.messages)


def test_loader_skip_mode_counts_and_keeps_batch_counts(tmp_path, synth_shards):
    shards = [str(p) for p in synth_shards]
    trunc = _damaged(tmp_path, synth_shards[1], "truncated")
    with pytest.warns(UserWarning, match=trunc.name):  # the metadata scan sees it first
        loader = object_crops([shards[0], str(trunc)] + shards[2:], batch_size=4, size=(32, 32), training=False,
                              on_error="skip", num_workers=2)
    batches = list(loader)
    assert len(batches) == len(loader) and loader.skipped >= 1
    with pytest.raises(DataError, match=trunc.name):  # the same through 2 workers without skip
        list(object_crops([shards[0], str(trunc)] + shards[2:], batch_size=4, size=(32, 32), training=False,
                          num_workers=2))


def test_too_few_shards_for_ranks_times_workers(synth_shards):
    with pytest.raises(ShardError, match=r"4 shard\(s\) cannot be split over 2 rank\(s\) x 3 worker\(s\)"):
        object_crops(synth_shards, batch_size=2, size=(32, 32), training=False, rank=0, world_size=2, num_workers=3)
    # Training resamples shards, so any count works there.
    loader = object_crops(synth_shards[:1], batch_size=2, size=(32, 32), rank=1, world_size=2, num_workers=3,
                          epoch_batches=3)
    assert len(list(loader)) == 3


def test_copy_of_good_shard_still_reads(tmp_path, synth_shards):
    dst = tmp_path / "copy-000000.tar"
    shutil.copy(synth_shards[0], dst)
    assert len(list(iter_videos(str(dst)))) == 2


def test_empty_tar_gives_a_command_line_fix_not_library_advice(tmp_path, synth_shards):
    empty = tmp_path / "train-000000.tar"
    tarfile.open(empty, "w").close()  # a valid tar archive without a single member
    for make in (lambda: object_crops([str(empty)], batch_size=2, size=(32, 32)),
                 lambda: video_chunks(str(tmp_path), batch_size=1, sequence_len=4)):
        with pytest.raises(ShardError) as err:
            make()
        msg = str(err.value)
        assert "train-000000.tar" in msg and "no video" in msg and "loci-fast data synth" in msg, msg
        assert "epoch_batches=" not in msg
    # Too few items for one batch: the fix names the batch size a user sets, not a keyword argument.
    with pytest.raises(ShardError) as err:
        object_crops(synth_shards[:1], batch_size=10**6, size=(32, 32))
    assert "model.batch_size" in str(err.value) and "epoch_batches=" not in str(err.value)


def test_inspect_reports_an_empty_tar(tmp_path, synth_shards):
    from loci_fast.data.inspect import inspect_shards

    empty = tmp_path / "train-000009.tar"
    tarfile.open(empty, "w").close()
    report = inspect_shards([synth_shards[0], str(empty)], check=True)
    assert not report.ok and report.videos == 2
    assert any("train-000009.tar" in e and "no sample" in e for e in report.errors), report.errors
