"""`loci-fast bench --train-step` on the loci stage: its example batch is a prediction chunk starting a
sequence, and real chunks (K steps forward and backward, Ranger step) run on the reference kernels."""
import math

import torch

from loci_fast.bench import train_step
from loci_fast.config import load_config
from loci_fast.train.stages import get_stage

TINY_LOCI = "configs/tiny/loci-s.json"


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
