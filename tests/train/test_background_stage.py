"""The background stage: selection from the config, gradients reach every parameter, example batch;
and a real 2-rank ``deepspeed`` CPU run on synth shards that lowers the loss of a fixed batch and
continues bitwise after SIGKILL + ``--resume auto``."""
import glob
import random
import signal

import numpy as np
import pytest
import torch

from loci_fast.config import load_config
from loci_fast.data import iter_videos
from loci_fast.data.views.frame_pairs import FramePairsView
from loci_fast.model.background import BackgroundPretrainer
from loci_fast.train import checkpoint as ckpt
from loci_fast.train.stages import get_stage, stage_from_config

from .helpers import REPO, kill_group, launcher, losses, run, start, train_args, wait_for_step

CONFIGS = {False: "configs/tiny/pretrain-background.json", True: "configs/tiny/pretrain-background-depth.json"}


@pytest.mark.parametrize("depth", [False, True])
def test_stage_selection_gradients_and_images(depth):
    cfg = load_config(CONFIGS[depth])
    assert stage_from_config(cfg) == "background" and get_stage("pretrain-bg") is get_stage("background")
    stage = get_stage("background")
    torch.manual_seed(0)
    model = stage.build_model(cfg)
    batch = stage.example_batch(cfg, torch.device("cpu"), torch.float32)
    out = stage.forward(model, batch)
    out.loss.backward()
    assert set(stage.metric_keys) <= set(out.metrics)
    missing = [n for n, p in model.named_parameters() if stage.trainable(n) and p.grad is None]
    assert missing == []  # a moving sample in the batch: the motion encoder is reached too
    rows = {"source", "target", "uncertainty", "loss region", "background rgb"}
    assert rows | ({"target depth", "background depth"} if depth else set()) == set(out.images)
    assert all(v.shape[1] == 3 and v.dim() == 4 for v in out.images.values())


# ----------------------------------------------------------------------------- real 2-rank runs

STEPS = ["--max-steps", "12", "--save-every", "3", "--keep", "0", "--set", "learning_rate=0.001"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bg")
    proc = run(launcher("python") + ["data", "synth", "--out", str(tmp / "data"), "--videos", "4", "--frames", "4",
                                     "--size", "64", "--objects", "2", "3", "--shard-videos", "1", "--workers", "1",
                                     "--no-progress"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp, REPO / CONFIGS[False], str(tmp / "data" / "train-*.tar")


@pytest.fixture(scope="module")
def uninterrupted(synth):
    tmp, cfg, shards = synth
    out = tmp / "uninterrupted"
    proc = run(launcher("deepspeed") + train_args(cfg, shards, out, *STEPS, stage=None), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def fixed_batch_loss(cfg_path, shards: str, weights: dict) -> float:
    """The step's total loss on a fixed batch (every frame of the first video, no augmentation),
    evaluation mode, the same uncertainty noise for every weight set."""
    model = BackgroundPretrainer.from_config(load_config(cfg_path)["model"])
    model.load_state_dict(weights, strict=True)
    model.eval()
    video = next(iter_videos(sorted(glob.glob(shards))[0]))
    view = FramePairsView(augment=False, time_std_dev=0)
    items = [view.make(video, t, np.random.default_rng(t), False) for t in range(video["meta"]["num_frames"])]
    batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
    torch.manual_seed(0)
    with torch.no_grad():
        return float(model(batch, 1000)["loss"])


@pytest.mark.slow
def test_two_ranks_lower_the_loss(synth, uninterrupted):
    _, cfg, shards = synth
    records = losses(uninterrupted)
    assert [s for s, _ in records] == list(range(1, 13))
    assert ckpt.client_state(uninterrupted)["stage"] == "background"
    assert ckpt.client_state(uninterrupted)["world_size"] == 2
    start_w, _ = ckpt.module_weights(uninterrupted / "checkpoints" / "step_00000003")
    end_w, _ = ckpt.module_weights(uninterrupted / "checkpoints" / "step_00000012")
    before, after = fixed_batch_loss(cfg, shards, start_w), fixed_batch_loss(cfg, shards, end_w)
    assert after < before, (before, after)


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise(synth, uninterrupted, seed):
    tmp, cfg, shards = synth
    out = tmp / "killed"
    kill_at = random.Random(seed).randint(4, 10)
    proc = start(launcher("deepspeed") + train_args(cfg, shards, out, *STEPS, stage=None))
    try:
        wait_for_step(proc, out / "metrics.jsonl", kill_at, timeout=600)
    finally:
        kill_group(proc, signal.SIGKILL)
        proc.wait()
    tag = ckpt.latest_tag(out / "checkpoints")
    assert tag is not None and ckpt.parse_tag(tag)[0] < 12
    resumed = run(launcher("deepspeed") + train_args(cfg, shards, out, *STEPS, "--resume", "auto", stage=None),
                  timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resumed from {out / 'checkpoints' / tag}" in resumed.stderr
    assert losses(out) == losses(uninterrupted)  # bitwise: same floats, same steps
