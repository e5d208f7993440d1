"""Checkpoint durability without DeepSpeed: revisions instead of overwrites, pruning order,
a failed save leaves the last complete checkpoint and ``latest`` as they were."""
from pathlib import Path

import pytest

from loci_fast.train import checkpoint as ckpt
from loci_fast.train import manifest


class FakeEngine:
    """Writes one file per save, like DeepSpeed's save_checkpoint does into <dir>/<tag>/."""

    def __init__(self):
        self.saves = 0

    def save_checkpoint(self, save_dir, tag, client_state, save_latest):
        assert not save_latest
        folder = Path(save_dir) / tag
        folder.mkdir(parents=True)
        self.saves += 1
        (folder / "engine.bin").write_bytes(bytes([self.saves]) * 64)


def _save(engine, out, step, keep=0, fail=False):
    def write_own(tag_dir):
        (tag_dir / "own.json").write_text("{}")
        if fail:
            raise OSError("disk full")
    return ckpt.save(engine, out, step, write_own=write_own, rank=0, keep=keep, barrier=lambda: None)


def test_saving_a_step_again_writes_a_new_revision(tmp_path):
    engine = FakeEngine()
    first = _save(engine, tmp_path, 5)
    second = _save(engine, tmp_path, 5)
    assert first.name == "step_00000005" and second.name == "step_00000005-r1"
    assert ckpt.is_complete(first) and ckpt.is_complete(second)
    assert (first / "engine.bin").read_bytes() == bytes([1]) * 64  # untouched
    assert ckpt.latest_tag(tmp_path / "checkpoints") == "step_00000005-r1"
    assert manifest.problem(first) is None and manifest.problem(second) is None
    assert ckpt.complete_tags(tmp_path / "checkpoints") == ["step_00000005", "step_00000005-r1"]


def test_a_failed_save_leaves_the_last_complete_checkpoint(tmp_path):
    engine = FakeEngine()
    good = _save(engine, tmp_path, 3)
    with pytest.raises(OSError):
        _save(engine, tmp_path, 3, fail=True)
    assert ckpt.latest_tag(tmp_path / "checkpoints") == good.name and ckpt.is_complete(good)
    # The half-written folder is not complete and is cleared by the next save's pruning.
    assert not ckpt.is_complete(tmp_path / "checkpoints" / "step_00000003-r1")
    _save(engine, tmp_path, 4, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir()) == [
        "step_00000003", "step_00000004"]


def test_pruning_removes_the_marker_first(tmp_path, monkeypatch):
    engine = FakeEngine()
    for step in (1, 2, 3):
        _save(engine, tmp_path, step, keep=0)
    seen = []
    real = ckpt.shutil.rmtree

    def rmtree(path, ignore_errors=False):
        seen.append((Path(path).name, (Path(path) / ckpt.COMPLETE).exists()))
        real(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(ckpt.shutil, "rmtree", rmtree)
    ckpt.prune(tmp_path / "checkpoints", keep=1)
    assert seen == [("step_00000001", False), ("step_00000002", False)]
    assert ckpt.complete_tags(tmp_path / "checkpoints") == ["step_00000003"]
