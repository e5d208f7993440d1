"""Every problem of item 6 stops `loci-fast train` before training, naming the problem and fix."""
import json

import pytest

from loci_fast.cli import main

from .helpers import toy_setup, train_args


@pytest.fixture
def toy(tmp_path):
    cfg, shards = toy_setup(tmp_path)
    return tmp_path, cfg, shards


def _fails(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, err
    return err


def test_unknown_config_key_is_named(toy, capsys):
    tmp, cfg, shards = toy
    data = json.loads(cfg.read_text())
    data["model"]["gestalt_sise"] = 3
    cfg.write_text(json.dumps(data))
    _fails(capsys, train_args(cfg, shards, tmp / "out"), "bad config", "gestalt_sise")


def test_missing_config_file(toy, capsys):
    tmp, cfg, shards = toy
    _fails(capsys, train_args(tmp / "nope.json", shards, tmp / "out"), "nope.json", "does not exist")


def test_bad_override_value(toy, capsys):
    tmp, cfg, shards = toy
    _fails(capsys, train_args(cfg, shards, tmp / "out", "--set", "model.batch_size=-3"),
           "model.batch_size")


def test_missing_shard_is_named(toy, capsys):
    tmp, cfg, _ = toy
    _fails(capsys, train_args(cfg, str(tmp / "shards" / "toy-{000000..000004}.tar"), tmp / "out"),
           "toy-000002.tar", "does not exist", "loci-fast data synth")


def test_unreadable_shard_is_named(toy, capsys):
    tmp, cfg, _ = toy
    broken = tmp / "broken-000000.tar"
    broken.write_bytes(b"this is not a tar archive" * 100)
    _fails(capsys, train_args(cfg, str(broken), tmp / "out"), str(broken), "not a readable tar file")


def test_no_shards_at_all(toy, capsys):
    tmp, cfg, _ = toy
    argv = train_args(cfg, "x", tmp / "out")
    argv = argv[:argv.index("--data")] + argv[argv.index("--data") + 2:]
    _fails(capsys, argv, "no training shards")


def test_deepspeed_batch_size_contradiction(toy, capsys):
    tmp, cfg, shards = toy
    ds = tmp / "ds.json"
    ds.write_text(json.dumps({"train_micro_batch_size_per_gpu": 16}))
    _fails(capsys, train_args(cfg, shards, tmp / "out", "--deepspeed", str(ds)),
           "train_micro_batch_size_per_gpu=16", "model.batch_size")


def test_deepspeed_dtype_contradiction(toy, capsys):
    tmp, cfg, shards = toy
    _fails(capsys, train_args(cfg, shards, tmp / "out", "--deepspeed", "configs/deepspeed/bf16.json"),
           "bf16", "model.mixed_precision=false")


def test_unknown_stage(toy, capsys):
    tmp, cfg, shards = toy
    argv = train_args(cfg, shards, tmp / "out", stage="stage7")
    _fails(capsys, argv, "unknown stage 'stage7'", "stage1")


def test_init_from_missing_checkpoint(toy, capsys):
    tmp, cfg, shards = toy
    _fails(capsys, train_args(cfg, shards, tmp / "out", "--init-from", str(tmp / "nothing")),
           "--init-from", "nothing")


def test_resume_path_without_checkpoint(toy, capsys):
    tmp, cfg, shards = toy
    _fails(capsys, train_args(cfg, shards, tmp / "out", "--resume", str(tmp / "elsewhere")),
           "--resume", "no complete checkpoint")


def test_truncated_shard_is_caught_before_training(toy, capsys):
    tmp, cfg, shards = toy
    whole = (tmp / "shards" / "toy-000001.tar").read_bytes()
    cut = tmp / "cut-000000.tar"
    cut.write_bytes(whole[: len(whole) // 2 + 100])
    err = _fails(capsys, train_args(cfg, str(cut), tmp / "out-cut"), str(cut), "truncated")
    assert "Traceback" not in err and not (tmp / "out-cut").exists()


def test_empty_shard_is_caught_before_training(toy, capsys):
    import tarfile

    tmp, cfg, _ = toy
    empty = tmp / "empty-000000.tar"
    tarfile.open(empty, "w").close()
    _fails(capsys, train_args(cfg, str(empty), tmp / "out-empty"), str(empty), "no sample")


def test_run_reports_its_kernel_backend(toy, monkeypatch):
    from loci_fast.train.logs import read_metrics

    from .helpers import launcher, run

    tmp, cfg, shards = toy
    monkeypatch.setenv("LOCI_FAST_KERNELS", "reference")
    proc = run(launcher("python") + train_args(cfg, shards, tmp / "out-kernels", "--max-steps", "1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "kernels: reference" in proc.stderr
    assert [r["kernels"] for r in read_metrics(tmp / "out-kernels" / "metrics.jsonl")] == ["reference"]
