"""`verify_shards`: the cheap whole-index check that training preflight runs before DeepSpeed starts."""
import tarfile

import numpy as np
import pytest

from loci_fast.data import verify_shards
from loci_fast.data.errors import ShardError


def test_good_shards_give_their_sample_counts(synth_dir, synth_shards):
    counts = verify_shards(str(synth_dir))
    assert list(counts) == synth_shards and list(counts.values()) == [2, 2, 2, 2]
    assert verify_shards(synth_shards[1:3]) == {s: 2 for s in synth_shards[1:3]}


def test_a_shard_cut_anywhere_is_named_with_the_fix(tmp_path, synth_shards):
    data = open(synth_shards[2], "rb").read()
    with tarfile.open(synth_shards[2]) as tf:
        ends = [m.offset_data + m.size for m in tf.getmembers()]
    rng = np.random.default_rng()
    # Random cuts before the end-of-archive marker is whole (the zero padding after it holds nothing),
    # and cuts exactly at member boundaries (where tarfile alone stops without a word).
    marker_end = -(-ends[-1] // 512) * 512 + 1024
    assert marker_end <= len(data)
    cuts = sorted(set(rng.integers(1, marker_end, 6).tolist() + [-(-e // 512) * 512 for e in ends[-3:]]))
    for cut in cuts:
        bad = tmp_path / "train-000002.tar"
        bad.write_bytes(data[:cut])
        try:
            verify_shards(synth_shards[:2] + [str(bad)] + synth_shards[3:])
        except ShardError as err:
            msg = str(err)
            assert err.shard == str(bad), (cut, msg)
        else:
            pytest.fail(f"a cut after {cut} of {len(data)} bytes went unnoticed")
        assert "truncated" in msg or "not a readable tar" in msg, (cut, msg)
        assert "loci-fast data synth" in msg


def test_empty_missing_and_non_tar_shards(tmp_path, synth_shards):
    empty = tmp_path / "empty-000000.tar"
    tarfile.open(empty, "w").close()  # a valid tar archive with no member
    with pytest.raises(ShardError, match="empty-000000.tar: .*no sample.*data inspect"):
        verify_shards([synth_shards[0], str(empty)])
    with pytest.raises(ShardError, match="gone.tar: the file does not exist"):
        verify_shards([str(tmp_path / "gone.tar")])
    text = tmp_path / "text-000000.tar"
    text.write_bytes(np.random.default_rng().bytes(3000))
    with pytest.raises(ShardError, match="text-000000.tar: not a readable tar"):
        verify_shards([str(text)])


def test_verification_reads_the_index_not_the_pixels(synth_shards, monkeypatch):
    def no_member_reads(self, member):
        raise AssertionError(f"verify_shards read the bytes of {member.name}")

    monkeypatch.setattr(tarfile.TarFile, "extractfile", no_member_reads)
    assert sum(verify_shards(synth_shards).values()) == 8
