"""The proposal stage (§17.6) on real synth shards: the data view (§19.4), a few training steps with
logs and image rows, ``--init-from`` an imported proposal file, and (slow) a 2-rank ``deepspeed``
CPU run that lowers the loss of a fixed batch."""
import glob

import numpy as np
import pytest
import torch

from loci_fast.cli import main as cli_main
from loci_fast.config import load_config
from loci_fast.data import iter_videos
from loci_fast.data.loaders import proposal_frames
from loci_fast.data.synth.run import SynthConfig, run_synth
from loci_fast.data.views.proposal import ProposalFramesView, sort_by_area
from loci_fast.model.proposal import LociProposal
from loci_fast.train import checkpoint as ckpt
from loci_fast.train.logs import read_metrics
from loci_fast.train.stages import get_stage

from .helpers import REPO, launcher, losses, run, train_args

CONFIG = REPO / "configs" / "tiny" / "pretrain-proposal.json"


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    """4 PyBullet videos (4 frames, 64x64, 2-3 objects), one per shard."""
    out = tmp_path_factory.mktemp("proposal-synth")
    run_synth(out, 4, SynthConfig(frames=4, size=64, min_objects=2, max_objects=3, seed=5), shard_videos=1,
              workers=1, progress=False, log=lambda s: None)
    return str(out / "*.tar")


def test_sort_by_area_ties_in_reverse_index_order():
    m = torch.zeros(4, 4, 4)
    m[0, :1, :2] = 1  # 2 px
    m[1, :2, :2] = 1  # 4 px
    m[2, 2:, 2:] = 1  # 4 px, the same area as mask 1: the later index comes first
    m[3, 3, 3] = 128 / 255  # one soft pixel
    assert torch.equal(sort_by_area(m), m[torch.tensor([2, 1, 0, 3])])


def test_view_sorts_pads_and_cuts(shards):
    video = next(iter_videos(sorted(glob.glob(shards))[0]))
    meta = video["meta"]
    t = next(i for i, ids in enumerate(meta["frame_instances"]) if len(ids) >= 2)
    rng = np.random.default_rng(0)
    plain = ProposalFramesView(6, augment=False).make(video, t, rng, False)
    seg = torch.from_numpy(video["segmentation"][t].astype(np.int64))
    areas = sorted(((seg == i).sum().item() for i in range(1, meta["num_instances"] + 1)), reverse=True)
    assert plain["masks"].shape == (6, 64, 64)
    assert plain["masks"].sum((1, 2)).tolist() == pytest.approx(areas + [0] * (6 - len(areas)))
    cut = ProposalFramesView(1, augment=False).make(video, t, rng, False)
    assert torch.equal(cut["masks"][0], plain["masks"][0])  # the largest instance survives the cut
    loader = proposal_frames(shards, batch_size=2, num_masks=4, size=(32, 32), seed=1, rank=0, world_size=1)
    batch = next(iter(loader))
    assert batch["masks"].shape == (2, 4, 32, 32) and batch["rgb"].shape == (2, 3, 32, 32)
    assert batch["depth"].shape == (2, 1, 32, 32) and bool(batch["valid"].all())


def test_stage_gradients_and_images(shards):
    cfg = load_config(CONFIG)
    stage = get_stage("proposal")
    torch.manual_seed(0)
    model = stage.build_model(cfg)
    assert isinstance(model, LociProposal) and model.num_slots == cfg["model"]["position_proposal"]["num_slots"]
    batch = next(iter(stage.batches(cfg, sorted(glob.glob(shards)), rank=0, world_size=1, seed=0, num_workers=0)))
    out = stage.forward(model, batch)
    out.loss.backward()
    assert set(out.metrics) == set(stage.metric_keys)
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    assert set(out.images) == {"frame", "target masks", "proposed masks", "position map (x, y, z)"}
    assert all(v.dim() == 4 and v.shape[1] == 3 and 0 <= v.min() and v.max() <= 1 for v in out.images.values())


def test_a_few_steps_and_init_from_an_imported_proposal(shards, tmp_path):
    out = tmp_path / "run"
    proc = run(launcher("python") + train_args(CONFIG, shards, out, "--max-steps", "3", "--save-every", "3",
                                               stage="proposal") + ["--image-every", "3"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all({"loss", "regularizer_loss", "mask_loss", "iou"} <= set(r) for r in records)
    assert [p.name for p in (out / "images").glob("*.png")] == ["step_00000003.png"]
    assert ckpt.client_state(out)["stage"] == "proposal"

    # an upstream-layout proposal, imported, initialises a fresh proposal run one-to-one
    torch.manual_seed(3)
    source = LociProposal.from_config(load_config(CONFIG)["model"])
    upstream = {"net." + k.replace("to_position", "to_possition"): v for k, v in source.state_dict().items()}
    torch.save({"state_dict": upstream, "global_step": 10}, tmp_path / "proposal.ckpt")
    imported = tmp_path / "proposal.safetensors"
    assert cli_main(["import-upstream", str(tmp_path / "proposal.ckpt"), "--kind", "proposal", "--config",
                     str(CONFIG), "--out", str(imported)]) == 0
    fresh = tmp_path / "fresh"
    proc = run(launcher("python") + train_args(CONFIG, shards, fresh, "--max-steps", "1", "--save-every", "1",
                                               "--init-from", str(imported), "--set", "learning_rate=0",
                                               stage="proposal"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "init-from" in proc.stderr + proc.stdout
    weights, _ = ckpt.module_weights(fresh)
    # learning rate 0: Ranger leaves the weights as loaded
    assert all(torch.equal(weights[k].float(), v) for k, v in source.state_dict().items())


# ----------------------------------------------------------------------------- real 2-rank run

def fixed_batch_loss(weights: dict, shards: str) -> float:
    """Loss of the stage on a fixed batch (the first video's frames, no augmentation)."""
    cfg = load_config(CONFIG)
    model = LociProposal.from_config(cfg["model"])
    model.load_state_dict(weights, strict=True)
    video = next(iter_videos(sorted(glob.glob(shards))[0]))
    view = ProposalFramesView(model.num_slots, tuple(cfg["model"]["input_size"]), augment=False)
    items = [view.make(video, t, np.random.default_rng(t), False) for t in range(video["meta"]["num_frames"])]
    batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
    with torch.no_grad():
        return float(get_stage("proposal").forward(model, batch).loss)


@pytest.mark.slow
def test_two_ranks_lower_the_loss(shards, tmp_path):
    out = tmp_path / "two"
    proc = run(launcher("deepspeed") + train_args(CONFIG, shards, out, "--max-steps", "16", "--save-every", "4", "--keep", "0",
                                                  stage="proposal"), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [s for s, _ in losses(out)] == list(range(1, 17))
    state = ckpt.client_state(out)
    assert state["world_size"] == 2 and state["stage"] == "proposal"
    first, _ = ckpt.module_weights(out / "checkpoints" / "step_00000004")
    last, _ = ckpt.module_weights(out / "checkpoints" / "step_00000016")
    before, after = fixed_batch_loss(first, shards), fixed_batch_loss(last, shards)
    assert after < before, (before, after)
