"""The ``loci`` stage (§17.5) on real synth shards: the TBPTT chunks with their state, gradients of every
trainable parameter, image rows, the weighted mixture of data.train, ``--init-from`` a stage-2 object
run, a background run and a proposal, the state's checkpoint round trip; and (slow) a 2-rank
``deepspeed`` CPU run that lowers the loss of a fixed sequence and continues bitwise after a SIGKILL in
the middle of a sequence followed by ``--resume auto``."""
import glob
import random

import pytest
import torch
from safetensors.torch import load_file, save_file

from loci_fast.config import load_config
from loci_fast.data.synth.run import SynthConfig, run_synth
from loci_fast.data.views.video_chunks import tbptt_chunks
from loci_fast.model.background import BackgroundPretrainer
from loci_fast.model.loci_model import LociModel
from loci_fast.model.pretrainer import LociPretrainer
from loci_fast.model.proposal import LociProposal
from loci_fast.train import checkpoint as ckpt
from loci_fast.train.handover import init_from
from loci_fast.train.logs import read_metrics
from loci_fast.train.stages import get_stage, stage_from_config
from loci_fast.train.stages.loci import mixture

from .helpers import REPO, kill_mid_sequence_then_resume, launcher, losses, run, train_args

CONFIG = REPO / "configs" / "tiny" / "loci-s.json"


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    """4 PyBullet videos (4 frames, 64x64, 2-3 objects), one per shard."""
    out = tmp_path_factory.mktemp("loci-synth")
    run_synth(out, 4, SynthConfig(frames=4, size=64, min_objects=2, max_objects=3, seed=7), shard_videos=1,
              workers=1, progress=False, log=lambda s: None)
    return str(out / "*.tar")


def test_chunks_state_gradients_and_images(shards, tmp_path):
    cfg = load_config(CONFIG)
    assert stage_from_config(cfg) == "loci"
    stage = get_stage("loci")
    torch.manual_seed(0)
    model = stage.build_model(cfg)
    assert isinstance(model, LociModel)
    params = stage.trainable_parameters(model)
    assert params and all(not n.startswith("background.") for n, p in model.named_parameters() if p.requires_grad)
    stream = stage.batches(cfg, sorted(glob.glob(shards)), rank=0, world_size=1, seed=0, num_workers=0)
    batches = iter(stream)
    state, stamps = None, []
    for _ in range(3):  # one group: teacher forcing [-3, -2, -1], then [0, 1], [2, 3]
        batch = next(batches)
        if state is None or stage.starts_sequence(batch):
            state = stage.initial_state(model, batch)
        out = stage.forward(model, batch, state)
        model.zero_grad(set_to_none=True)
        out.loss.backward()
        stamps.append((batch["time_steps"].tolist(), stage.starts_sequence(batch)))
        # the checkpoint form of the state gives the same state back
        tensors = stage.state_tensors(stage.detach_state(out.state))
        save_file(tensors, str(tmp_path / "state.safetensors"))
        back = stage.state_from_tensors(load_file(str(tmp_path / "state.safetensors")), torch.device("cpu"))
        assert set(back.state_dict()) == set(tensors)
        assert all(torch.equal(back.state_dict()[k], v) for k, v in tensors.items())
        state = back
    assert stamps == [([-3, -2, -1], True), ([0, 1], False), ([2, 3], False)]
    assert set(stage.metric_keys) <= set(out.metrics)
    assert float(out.metrics["position_loss"]) > 0 and float(out.metrics["time_loss"]) > 0
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    o = cfg["model"]["num_slots"]
    assert {"frame", "reconstruction", "prediction", "slot masks", "background mask"} | {
        f"mask {k}" for k in range(o)} == set(out.images)
    assert all(v.dim() == 4 and v.shape[1] == 3 and 0 <= v.min() and v.max() <= 1 for v in out.images.values())


def test_mixture_groups_shards_by_their_data_train_entry(shards, tmp_path):
    files = sorted(glob.glob(shards))
    cfg = {"data": {"train": [{"shards": files[0], "weight": 7.1}, {"shards": files[1].replace(".tar", "*"), "weight": 6.4}]}}
    mix = mixture(cfg, files)
    assert mix == {(files[0],): 7.1, (files[1],): 6.4, tuple(files[2:]): 1.0}
    assert mixture({"data": {"train": [{"shards": shards, "weight": 3.0}]}}, files) == files


def _saved(tmp_path, name, model, stage, gen):
    weights = {k: torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
               for k, v in model.state_dict().items()}
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in weights.items()}, str(path), metadata={"stage": stage, "step": "5"})
    return path, weights


def test_init_from_objects_background_and_proposal(tmp_path, gen):
    cfg = load_config(CONFIG)
    stage = get_stage("loci")
    objects, obj_w = _saved(tmp_path, "objects", LociPretrainer(cfg["model"]), "stage2", gen)
    bg, bg_w = _saved(tmp_path, "bg", BackgroundPretrainer.from_config(cfg["model"]), "background", gen)
    model = LociModel.from_config(cfg)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = init_from(model, stage, [str(objects), str(bg)])
    state = model.state_dict()
    for k, v in obj_w.items():
        if k.startswith(("encoder.", "decoder.")):
            assert torch.equal(state[k], v), k
    assert torch.equal(state["object_discovery.std"], obj_w["std"])
    assert torch.equal(state["object_discovery.depth"], obj_w["depth"])
    for k, v in bg_w.items():
        if k.startswith("net."):
            assert torch.equal(state["background." + k[4:]], v), k
    assert all(torch.equal(state[k], fresh[k]) for k in state if k.startswith(("predictor.", "update_gate.")))
    assert any("std -> object_discovery.std" in line for line in report)
    # segmentation mode: the proposal too (and it stays frozen)
    seg = cfg.replace({"model.inference_mode": "segmentation"})
    prop, prop_w = _saved(tmp_path, "proposal", LociProposal.from_config(seg["model"]), "proposal", gen)
    model = LociModel.from_config(seg)
    init_from(model, stage, [str(prop)])
    assert all(torch.equal(model.state_dict()["proposal." + k], v) for k, v in prop_w.items())
    assert not any(stage.trainable(n) for n, _ in model.named_parameters() if n.startswith("proposal."))


def test_a_few_steps_from_object_and_background_runs(shards, tmp_path, gen):
    cfg = load_config(CONFIG)
    objects, obj_w = _saved(tmp_path, "objects", LociPretrainer(cfg["model"]), "stage2", gen)
    bg, bg_w = _saved(tmp_path, "bg", BackgroundPretrainer.from_config(cfg["model"]), "background", gen)
    out = tmp_path / "run"
    proc = run(launcher("python") + train_args(CONFIG, shards, out, "--max-steps", "4", "--save-every", "4",
                                               "--init-from", str(objects), "--init-from", str(bg),
                                               stage=None) + ["--image-every", "4"], timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all({"loss", "reconstruction_rgb_loss", "prediction_rgb_loss", "position_loss", "time_loss"} <= set(r)
               for r in records)
    assert records[0]["prediction_rgb_loss"] == 0 and records[1]["prediction_rgb_loss"] > 0  # teacher forcing first
    assert [p.name for p in (out / "images").glob("*.png")] == ["step_00000004.png"]
    assert ckpt.client_state(out)["stage"] == "loci"
    weights, _ = ckpt.module_weights(out)
    # the frozen background is the background run's, untouched by four optimiser steps
    assert all(torch.equal(weights["background." + k[4:]].float(), v) for k, v in bg_w.items() if k.startswith("net."))


# ----------------------------------------------------------------------------- real 2-rank runs

STEPS = ["--max-steps", "12", "--save-every", "3", "--keep", "0", "--set", "learning_rate=0.001"]


def fixed_sequence_loss(weights: dict, shards: str) -> float:
    """The summed chunk losses over a fixed sequence (the first 2 videos' frames, no augmentation), the
    same draws for every weight set."""
    from loci_fast.data import iter_videos
    from loci_fast.data.views.video_chunks import VideoChunksView

    cfg = load_config(CONFIG)
    model = LociModel.from_config(cfg)
    model.load_state_dict(weights, strict=True)
    view = VideoChunksView(int(cfg["sequence_len"]), (64, 64), augment=False, with_masks=False)
    import numpy as np

    items = [view.make(next(iter_videos(p)), 0, np.random.default_rng(0), False)
             for p in sorted(glob.glob(shards))[:2]]
    batch = {k: torch.stack([it[k] for it in items]) for k in ("rgb", "depth", "use_depth")}
    torch.manual_seed(0)
    total, state = 0.0, model.initial_state(2)
    with torch.no_grad():
        for chunk in tbptt_chunks(batch, int(cfg["backprop_steps"]), int(cfg["teacher_forcing"])):
            out = model(chunk["rgb"], chunk["depth"], chunk["time_steps"], chunk["use_depth"], state)
            total, state = total + float(out.loss), out.state
    return total


@pytest.fixture(scope="module")
def uninterrupted(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("loci-two") / "uninterrupted"
    proc = run(launcher("deepspeed") + train_args(CONFIG, shards, out, *STEPS, stage=None), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


@pytest.mark.slow
def test_two_ranks_lower_the_loss(shards, uninterrupted):
    assert [s for s, _ in losses(uninterrupted)] == list(range(1, 13))
    state = ckpt.client_state(uninterrupted)
    assert state["world_size"] == 2 and state["stage"] == "loci"
    first, _ = ckpt.module_weights(uninterrupted / "checkpoints" / "step_00000003")
    last, _ = ckpt.module_weights(uninterrupted / "checkpoints" / "step_00000012")
    before, after = fixed_sequence_loss(first, shards), fixed_sequence_loss(last, shards)
    assert after < before, (before, after)


@pytest.mark.slow
def test_sigkill_mid_sequence_then_resume_is_bitwise(shards, uninterrupted, seed, tmp_path):
    out = tmp_path / "killed"
    # steps 3k+1 start a sequence (teacher forcing); kill after a checkpoint in mid-sequence
    kill_at = random.Random(seed).choice([4, 5, 7, 8, 10])
    tag, resumed = kill_mid_sequence_then_resume(CONFIG, shards, out, STEPS, kill_at, 3, 12)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resumed from {out / 'checkpoints' / tag}" in resumed.stderr
    assert losses(out) == losses(uninterrupted)  # bitwise: same floats, same steps
