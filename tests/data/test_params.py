"""Reruns of `synth` and `convert-hdf5` into a folder: same parameters resume, others are refused.

The parameters of a folder's shards are kept beside them in ``<name>.params.json``.
"""
import json

import pytest

from loci_fast.data.convert_hdf5 import convert_hdf5
from loci_fast.data.errors import DataError
from loci_fast.data.synth.run import SynthConfig, run_synth

TINY = dict(frames=2, size=16, min_objects=1, max_objects=2, seed=11)
QUIET = dict(progress=False, log=lambda s: None)


def _synth(out, videos=2, shard_videos=1, **changes):
    return run_synth(out, videos, SynthConfig(**{**TINY, **changes}), shard_videos=shard_videos, **QUIET)


@pytest.mark.parametrize("change, flag", [({"seed": 12}, "--seed"), ({"size": 24}, "--size"),
                                          ({"camera": "moving"}, "--camera"),
                                          ({"max_objects": 3}, "--objects"),
                                          ({"rgb_codec": "jpg"}, "--rgb-codec"),
                                          ({"shard_videos": 2}, "--shard-videos"),
                                          ({"videos": 3}, "--videos")])
def test_synth_rerun_with_other_parameters_is_refused(tmp_path, change, flag):
    paths = _synth(tmp_path)
    stored = json.loads((tmp_path / "train.params.json").read_text())
    assert stored["seed"] == TINY["seed"] and stored["videos"] == 2 and stored["command"] == "synth"
    paths[1].unlink()  # an interrupted first run
    before = paths[0].read_bytes()
    with pytest.raises(DataError) as err:
        _synth(tmp_path, **change)
    msg = str(err.value)
    assert flag in msg and "train.params.json" in msg and "--out" in msg and "delete" in msg, msg
    assert not paths[1].exists() and paths[0].read_bytes() == before  # nothing reused, nothing written
    # The same parameters resume as before.
    assert _synth(tmp_path) == paths and paths[1].exists()


def test_synth_params_are_per_split_and_cli_refuses_without_traceback(tmp_path, capsys):
    from loci_fast.cli import main as cli

    _synth(tmp_path)
    _synth(tmp_path, split="val", seed=99)  # another split, other parameters: its own file
    assert json.loads((tmp_path / "val.params.json").read_text())["seed"] == 99
    cmd = ["data", "synth", "--out", str(tmp_path), "--videos", "2", "--frames", "2", "--size", "16",
           "--objects", "1", "2", "--shard-videos", "1", "--no-progress"]
    assert cli(cmd + ["--seed", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("loci-fast data synth: error: ") and f"--seed {TINY['seed']} there, 5 now" in err, err
    assert err.count("\n") == 1
    assert cli(cmd + ["--seed", str(TINY["seed"])]) == 0


def test_shards_without_a_params_file_are_not_reused(tmp_path):
    paths = _synth(tmp_path)
    (tmp_path / "train.params.json").unlink()  # written by an older version, or by hand
    paths[1].unlink()
    with pytest.raises(DataError, match="train.params.json"):
        _synth(tmp_path)
    # A params file whose shards are all gone (a run that failed before its first shard) is replaced.
    for p in tmp_path.glob("train-*.tar"):
        p.unlink()
    (tmp_path / "train.params.json").write_text(json.dumps({"command": "synth", "seed": 0}))
    assert _synth(tmp_path) == paths


@pytest.mark.parametrize("change, flag", [({"shard_videos": 2}, "--shard-videos"), ({"name": "other"}, None),
                                          ({"dataset": "movi-x"}, "--dataset"),
                                          ({"static_camera": False}, "--static-camera")])
def test_convert_rerun_with_other_parameters_is_refused(tmp_path, upstream_hdf5, change, flag):
    src, _ = upstream_hdf5
    first = convert_hdf5(src, tmp_path, shard_videos=1, **QUIET)
    first[1].unlink()
    if flag is None:  # another name writes other shards, beside the first ones
        assert [p.name for p in convert_hdf5(src, tmp_path, shard_videos=1, **{**QUIET, **change})] == \
            ["other-000000.tar", "other-000001.tar"]
        return
    with pytest.raises(DataError) as err:
        convert_hdf5(src, tmp_path, **{"shard_videos": 1, **QUIET, **change})
    assert flag in str(err.value) and "test.params.json" in str(err.value)
    assert not first[1].exists()
    assert convert_hdf5(src, tmp_path, shard_videos=1, **QUIET) == first and first[1].exists()


def test_convert_rerun_from_another_source_file_is_refused(tmp_path, upstream_hdf5):
    from .conftest import make_upstream_hdf5

    src, _ = upstream_hdf5
    convert_hdf5(src, tmp_path / "out", shard_videos=1, **QUIET)
    other = tmp_path / "other.hdf5"
    make_upstream_hdf5(other, seed=1, lengths=(4, 3))
    with pytest.raises(DataError, match="input.*other.hdf5"):
        convert_hdf5(other, tmp_path / "out", shard_videos=1, **QUIET)
