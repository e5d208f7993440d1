"""`import-upstream` on a damaged checkpoint says that the file is damaged (not that it is unsafe)."""
import os
from pathlib import Path

import pytest
import torch

from loci_fast.cli import main as cli_main

TINY_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny" / "pretrain-mask-decoder.json"


def _checkpoint(path):
    torch.save({"state_dict": {"model.w": torch.randn(64, 64), "model.b": torch.randn(64)},
                "epoch": 3}, path)
    return path.read_bytes()


def _damage(kind, data):
    rng = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    if kind == "empty":
        return b""
    if kind == "truncated":
        cut = int(torch.randint(64, len(data) - 64, (1,), generator=rng))
        return data[:cut]
    if kind == "flipped":  # bytes inside the tensor data changed: only the zip CRC tells
        start = len(data) // 3
        noise = bytes(torch.randint(0, 256, (64,), generator=rng, dtype=torch.uint8).tolist())
        return data[:start] + noise + data[start + 64:]
    if kind == "text":
        return b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["empty", "truncated", "flipped", "text"])
def test_damaged_checkpoint_is_called_damaged(tmp_path, capsys, kind):
    good = _checkpoint(tmp_path / "good.ckpt")
    bad = tmp_path / f"{kind}.ckpt"
    bad.write_bytes(_damage(kind, good))
    rc = cli_main(["import-upstream", str(bad), "--config", str(TINY_CONFIG),
                   "--out", str(tmp_path / "out.safetensors")])
    err = capsys.readouterr().err
    assert rc == 1 and not (tmp_path / "out.safetensors").exists()
    assert str(bad) in err and ("corrupt" in err or "not a PyTorch checkpoint" in err), err
    assert "weights_only=False" not in err  # no advice to unpickle a broken file


def test_legacy_format_truncated_is_called_damaged(tmp_path):
    from loci_fast.model.command import load_upstream_checkpoint

    path = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": {"w": torch.randn(32, 32)}}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="legacy.ckpt.*corrupt") as err:
        load_upstream_checkpoint(str(path))
    assert "weights_only=False" not in str(err.value)
    path.write_bytes(data)
    assert set(load_upstream_checkpoint(str(path))) == {"w"}
