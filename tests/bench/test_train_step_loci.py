"""`loci-fast bench --train-step` on the loci stage: its example batch is a prediction chunk starting a
sequence, and real chunks (K steps forward and backward, Ranger step) run on the reference kernels."""
import json
import math
from pathlib import Path

import pytest
import torch

from loci_fast.bench import train_step
from loci_fast.cli import main
from loci_fast.config import load_config
from loci_fast.train.stages import get_stage

TINY_LOCI = "configs/tiny/loci-s.json"


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a loaded 2-core machine two spinning threads made a tiny chunk 25x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_example_batch_is_a_prediction_chunk():
    cfg = load_config(TINY_LOCI)
    stage = get_stage("loci")
    torch.manual_seed(0)
    model = stage.build_model(cfg)
    batch = stage.example_batch(cfg, torch.device("cpu"), torch.float32)
    k = int(cfg["backprop_steps"])
    assert batch["rgb"].shape == (cfg["model"]["batch_size"], k + 1, 3, 64, 64) and stage.starts_sequence(batch)
    assert not torch.equal(batch["rgb"][:, 0], batch["rgb"][:, 1])  # the object moves
    out = stage.forward(model, batch)
    assert len(out.state.extra) and float(out.metrics["prediction_rgb_loss"]) > 0
    assert int(out.state.extra["last.time"]) == k


def test_loci_chunks_run_and_report(tmp_path):
    res = train_step.run_train_step(TINY_LOCI, backends=("reference",), out_dir=tmp_path, steps=2, warmup=1,
                                    dtype="fp32")
    row = res["rows"][0]
    assert (row["stage"], row["backend"], row["batch_size"], row["input_size"]) == ("loci", "reference", 2, [64, 64])
    assert row["samples_per_s"] > 0 and math.isfinite(row["first_loss"]) and math.isfinite(row["last_loss"])


def test_bo_sweep_runs_every_size_and_writes_each_row(tmp_path):
    lines = []
    res = train_step.run_train_step(TINY_LOCI, backends=("reference",), out_dir=tmp_path, steps=1, warmup=0,
                                    dtype="fp32", bo=[4, 8], log=lines.append)
    assert [(r["bo"], r["batch_size"], r["num_slots"]) for r in res["rows"]] == [(4, 1, 4), (8, 2, 4)]
    assert all(r["samples_per_s"] > 0 and r["cpu_s_per_step"] > 0 and r["peak_memory_gib"] is None
               for r in res["rows"])
    assert res["path"].endswith("-train-loci-bo4-8.json") and len(lines) == 2 and "B·O=8" in lines[1]
    saved = json.loads(Path(res["path"]).read_text())
    assert saved["rows"] == res["rows"]
    md = Path(res["path"]).with_suffix(".md").read_text()
    assert "| loci | reference | fp32 | 2 | 64x64 | 8 |" in md and "n/a (CPU)" in md


def test_bo_sweep_records_out_of_memory_and_goes_on(tmp_path, monkeypatch):
    real = train_step.measure

    def measure(config, backend, **kwargs):
        if kwargs["bo"] == 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB")
        return real(config, backend, **kwargs)

    monkeypatch.setattr(train_step, "measure", measure)
    res = train_step.run_train_step(TINY_LOCI, backends=("reference",), out_dir=tmp_path, steps=1, warmup=0,
                                    dtype="fp32", bo=[4, 8], log=lambda _: None)
    assert res["rows"][0]["error"].startswith("out of memory") and res["rows"][1]["bo"] == 8
    assert "out of memory" in Path(res["path"]).with_suffix(".md").read_text()


def test_speedups_pair_backends_per_slot_batch():
    rows = [{"bo": 16, "backend": "reference", "samples_per_s": 2.0}, {"bo": 16, "backend": "triton", "samples_per_s": 5.0},
            {"bo": 32, "backend": "reference", "samples_per_s": 1.0}, {"bo": 32, "backend": "triton", "error": "oom"}]
    assert train_step.speedups(rows) == {"speedup_triton_over_reference": 2.5, "speedup_by_bo": {"16": 2.5}}


@pytest.mark.parametrize("argv, words", [
    (["--bo", "6"], "multiple of model.num_slots = 4"),
    (["--bo", "4,x"], "positive integers separated by commas"),
    (["--bo", "4", "--batch-size", "2"], "not both"),
    (["--warmup", "-1"], "--warmup must be >= 0"),
])
def test_cli_refuses_bad_sweeps(tmp_path, argv, words):
    with pytest.raises(SystemExit, match=words):
        main(["bench", "--train-step", TINY_LOCI, *argv, "--out", str(tmp_path)])


def test_bo_is_for_slot_stages_only():
    with pytest.raises(ValueError, match="for stage stage2 give --batch-size"):
        train_step.batch_for_bo(load_config("configs/tiny/pretrain-encoder-decoder-stage2.json"), 8)
