"""The frame-pairs view's background extras (§19.4): Δt, fg-mask use, and per-file loss settings
looked up by shard, through the real stream over PyBullet shards."""
import copy

import numpy as np
import pytest
import torch

from loci_fast.data import iter_videos
from loci_fast.data.loaders import _common
from loci_fast.data.views.frame_pairs import LOSS_SETTINGS, FramePairsView, settings_by_shard, uses_fg


def pairs(view, shards, **kw):
    args = dict(seed=0, rank=0, world_size=1, num_workers=0, training=True, epoch_batches=2, on_error="raise",
                buffer_videos=2, items_per_visit=4)
    args.update(kw)
    return list(_common(view, shards, 4, **args))


def test_per_file_settings_follow_the_shard(synth_shards):
    a, b = synth_shards[:2], synth_shards[2:]
    entries = [{"name": "a", "shards": a, "weight": 1.0, "rgb_loss_factor": 2.5, "color_input": False,
                "uncertainty_regularizer": 0.25, "rgb_warmup": 7, "static": False, "time_std_dev": 0},
               {"name": "b", "shards": b, "weight": 1.0, "depth_weighting": True, "depth_warmup": 3}]
    view = FramePairsView((32, 32), file_settings=settings_by_shard(entries))
    a_keys = {v["key"] for v in iter_videos(a)}
    seen = set()
    for batch in pairs(view, {tuple(a): 1.0, tuple(b): 1.0}, epoch_batches=6):
        for i, key in enumerate(batch["key"]):
            side = "a" if key in a_keys else "b"
            seen.add(side)
            expect = dict(LOSS_SETTINGS, **{k: v for k, v in entries[side == "b"].items() if k in LOSS_SETTINGS})
            for k, v in expect.items():
                assert batch[k][i].dtype == torch.float32 and float(batch[k][i]) == float(v), (side, k)
            src, tgt = batch["frames"][i].tolist()
            if side == "a":  # time_std_dev 0: the same frame; static False: dt is the (zero) gap
                assert src == tgt and float(batch["dt"][i]) == 0.0
                torch.testing.assert_close(batch["source_rgb"][i], batch["target_rgb"][i], rtol=0, atol=0)
    assert seen == {"a", "b"}
    with pytest.raises(ValueError, match=r"unknown frame-pair settings \['rgb_factor'\]"):
        FramePairsView(file_settings={"x.tar": {"rgb_factor": 1.0}})


def test_dt_from_the_gap_unless_static(synth_shards):
    shards = synth_shards[:2]
    moving = FramePairsView((32, 32), file_settings=settings_by_shard([{"shards": shards, "static": False}]))
    gaps = []
    for batch in pairs(moving, shards, epoch_batches=4):
        src, tgt = batch["frames"].T
        torch.testing.assert_close(batch["dt"], (tgt - src).float(), rtol=0, atol=0)
        gaps += (tgt - src).tolist()
    assert any(g != 0 for g in gaps)
    # the synth videos have a static camera: without a per-file setting dt is 0 (upstream's static: true)
    for batch in pairs(FramePairsView((32, 32)), shards):
        assert (batch["dt"] == 0).all() and (batch["frames"][:, 0] != batch["frames"][:, 1]).any()


def test_gaussian_target_gap(synth_shards):
    view = FramePairsView((32, 32), time_std_dev=1.0)
    rng = np.random.default_rng(0)
    gaps = np.array([view.target(4, 8, rng) - 4 for _ in range(2000)])
    assert gaps.min() >= -4 and gaps.max() <= 3 and abs(gaps.mean()) < 0.1 and 0.8 < gaps.std() < 1.2
    assert view.target(4, 8, rng, time_std_dev=0) == 4  # a per-file setting overrides the view's


def test_fg_masks_count_only_when_visible(synth_shards):
    video = next(iter_videos(synth_shards[0]))
    assert uses_fg(video["meta"])
    view = FramePairsView(augment=False)
    made = view.make(video, 0, np.random.default_rng(1), False)
    assert made["use_fg"] and made["source_fg"].sum() > 0
    np.testing.assert_array_equal(made["source_fg"][0].numpy(), (video["segmentation"][0] > 0).astype(np.float32))
    hidden = copy.deepcopy(video)
    hidden["meta"]["frame_instances"] = [[] for _ in hidden["meta"]["frame_instances"]]
    made = view.make(hidden, 0, np.random.default_rng(1), False)
    assert not made["use_fg"] and made["source_fg"].sum() == 0 and made["target_fg"].sum() == 0
    dummy = view.dummy(video["meta"])
    assert set(dummy) == set(made)
