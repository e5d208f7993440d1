"""The demo's loci evaluation: frames put back in order from TBPTT chunks, the per-frame FG-ARI, and the
grid of reconstructions and slot masks from a real (tiny, untrained) Loci-s run on real synth shards."""
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from loci_fast.config import load_config
from loci_fast.data.loaders import video_chunks
from loci_fast.data.synth.run import SynthConfig, run_synth
from loci_fast.demo import loci as demo_loci
from loci_fast.model.loci_model import LociModel

from ..train.helpers import REPO

TINY = REPO / "configs" / "tiny" / "loci-s.json"


class FrameEcho(torch.nn.Module):
    """Stands in for LociModel's chunk contract: a chunk that does not start a sequence is preceded by
    the previous chunk's last frame, K+1 time stamps give K steps, step i reconstructs frame i of that
    sequence (frame 0 on teacher-forcing steps); here the reconstruction is the frame itself and slot 0's
    mask its time stamp, so the test can see which frame each step had."""

    def initial_state(self, batch, device=None, dtype=None):
        return {}

    def forward(self, rgb, depth, time_steps, use_depth, state, evaluate=False):
        ts = [int(t) for t in time_steps.tolist()]
        if "last" in state:
            rgb, ts = torch.cat([state["last"][0], rgb], 1), [state["last"][1]] + ts
        steps = []
        for i, tau in enumerate(ts[:-1]):
            t = i if tau >= 0 else 0
            mask = torch.zeros(rgb.shape[0], 2, *rgb.shape[-2:])
            mask[:, 0], mask[:, 1] = float(tau), 1.0
            steps.append(SimpleNamespace(reconstruction={"output_rgb": rgb[:, t], "mask": mask}))
        return SimpleNamespace(steps=steps, state={"last": (rgb[:, -1:], ts[-1])})


def _video_batches(frames: int, k: int, teacher: int, videos: int = 2):
    """The loader's TBPTT chunks for ``videos`` sequences of frames whose pixels hold 10·sequence + frame."""
    out = []
    for v in range(videos):
        video = torch.arange(frames, dtype=torch.float32).view(1, frames, 1, 1, 1).expand(2, frames, 3, 4, 4) + 10 * v
        seg = (video[:, :, 0] * 0 + 1).long()
        out.append({"rgb": video[:, :1].expand(2, teacher + 1, 3, 4, 4), "segmentation": seg[:, :1].expand(2, teacher + 1, 4, 4),
                    "time_steps": torch.arange(-teacher - 1, 0), "reset": True})
        for s in range(0, frames, k):
            out.append({"rgb": video[:, s:s + k], "segmentation": seg[:, s:s + k],
                        "time_steps": torch.arange(s, s + k), "reset": False})
    for b in out:
        b["depth"], b["use_depth"] = b["rgb"][:, :, :1], torch.ones(2, dtype=torch.bool)
    return out


def test_frames_come_back_in_order_and_each_reconstruction_is_its_frame():
    result = demo_loci.run_videos(FrameEcho(), iter(_video_batches(frames=8, k=2, teacher=2)), num_videos=4)
    assert result.rgb.shape[:2] == (4, 7)  # two batches of 2 videos; the last frame is only predicted
    for v in range(4):
        expected = torch.arange(7, dtype=torch.float32) + 10 * (v // 2)
        assert result.rgb[v, :, 0, 0, 0].tolist() == expected.tolist()
        assert result.masks[v, :, 0, 0, 0].tolist() == list(range(7))  # each frame from the step at its time stamp
        # the reconstruction (clamped to [0, 1]) is the very frame: the same sequence before clamping
        assert result.reconstruction[v, :, 0, 0, 0].tolist() == expected.clamp(0, 1).tolist()


def test_stops_after_the_videos_asked_for():
    batches = _video_batches(frames=4, k=2, teacher=2, videos=3)
    result = demo_loci.run_videos(FrameEcho(), iter(batches), num_videos=2)
    assert result.rgb.shape[0] == 2 and result.rgb[:, :, 0, 0, 0].tolist() == [[0, 1, 2]] * 2


def test_fg_ari_is_one_for_slots_on_the_objects_and_drops_when_they_merge():
    seg = torch.zeros(1, 2, 8, 8, dtype=torch.long)
    seg[..., :4, :4], seg[..., 4:, 4:] = 1, 2
    masks = torch.zeros(1, 2, 3, 8, 8)  # 2 slots + background
    masks[:, :, 0][seg == 1], masks[:, :, 1][seg == 2], masks[:, :, 2][seg == 0] = 1, 1, 1
    video = demo_loci.VideoFrames(torch.zeros(1, 2, 3, 8, 8), torch.zeros(1, 2, 3, 8, 8), masks, seg)
    assert demo_loci.fg_ari_per_frame(video) == pytest.approx(1.0)
    merged = masks.clone()
    merged[:, :, 0] += merged[:, :, 1]
    merged[:, :, 1] = 0
    assert demo_loci.fg_ari_per_frame(video._replace(masks=merged)) == pytest.approx(0.0)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("demo-loci-synth")
    run_synth(out, 2, SynthConfig(frames=4, size=64, min_objects=2, max_objects=3, seed=3), shard_videos=2,
              workers=1, progress=False, log=lambda s: None)
    return str(out / "*.tar")


def test_grid_of_a_real_model_on_real_videos(shards, tmp_path):
    cfg = load_config(TINY)
    torch.manual_seed(0)
    model = LociModel.from_config(cfg).eval()
    chunks = video_chunks(shards, batch_size=2, sequence_len=4, size=(64, 64), seed=7, rank=0, world_size=1,
                          training=False, with_masks=False, backprop_steps=2, teacher_forcing=2)
    result = demo_loci.run_videos(model, iter(chunks), num_videos=2)
    slots = int(cfg["model"]["num_slots"])
    assert result.rgb.shape == (2, 3, 3, 64, 64) and result.masks.shape == (2, 3, slots + 1, 64, 64)
    assert torch.allclose(result.masks.sum(2), torch.ones(2, 3, 64, 64), atol=1e-5)
    windows = next(iter(video_chunks(shards, batch_size=2, sequence_len=4, size=(64, 64), seed=7, rank=0,
                                     world_size=1, training=False, with_masks=False)))
    assert torch.equal(result.rgb, windows["rgb"][:, :3]) and torch.equal(result.segmentation,
                                                                           windows["segmentation"][:, :3])
    ari = demo_loci.fg_ari_per_frame(result)
    assert 0.0 - 1e-9 <= ari <= 1.0 + 1e-9
    rows = demo_loci.frame_rows(result, 1)
    assert list(rows) == ["frame", "reconstruction", "slot masks"] + [f"slot {k} mask" for k in range(slots)] + [
        "background mask"]
    from loci_fast.train.logs import image_grid
    path = tmp_path / "grid.png"
    Image.fromarray(image_grid(rows)).save(path)
    assert Image.open(path).size == (3 * 66, len(rows) * 66)


def _run_folder(path, model, stage, raw=None):
    """A run folder as the trainer leaves it (one complete checkpoint) holding ``model``'s weights."""
    import json

    from safetensors.torch import save_file

    from loci_fast.train import checkpoint as ckpt

    tag = path / ckpt.CHECKPOINT_DIR / ckpt.tag_for(5)
    tag.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tag / ckpt.WEIGHTS),
              metadata={"format": "loci-fast"})
    (tag / ckpt.CLIENT).write_text(json.dumps({"config": raw, "stage": stage, "step": 5}))
    (tag / ckpt.COMPLETE).write_text("ok\n")


@pytest.mark.slow
def test_evaluate_loci_against_the_handed_over_model(shards, tmp_path, gen):
    import json

    from loci_fast.demo.report import _loci_section

    from loci_fast.demo import DemoStage, evaluate_loci
    from loci_fast.model.background import BackgroundPretrainer
    from loci_fast.model.pretrainer import LociPretrainer
    from loci_fast.train.handover import init_from
    from loci_fast.train.stages import get_stage

    raw = json.loads(TINY.read_text())
    cfg = load_config(TINY)
    objects, background = LociPretrainer(cfg["model"]), BackgroundPretrainer.from_config(cfg["model"])
    for module in (objects, background):  # weights unlike a fresh model's
        with torch.no_grad():
            for p in module.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    _run_folder(tmp_path / "stage2", objects, "stage2")
    _run_folder(tmp_path / "background", background, "background")
    torch.manual_seed(int(cfg["seed"]))  # the handed-over model exactly as evaluate_loci builds it
    model = LociModel.from_config(cfg)
    init_from(model, get_stage("loci"), [str(tmp_path / "stage2"), str(tmp_path / "background")])
    _run_folder(tmp_path / "loci", model, "loci", raw)
    (tmp_path / "report").mkdir()
    stage = DemoStage("loci", "loci-s.json", 5, ("stage2", "background"), kind="loci")
    evaluate_loci(stage, tmp_path, shards, videos=2)
    assert stage.eval["videos"] == 2 and stage.eval["frames"] == 3
    # unchanged weights: the trained and the handed-over numbers are the same numbers
    assert stage.eval["rgb_mse"] == stage.eval["initial_rgb_mse"] > 0
    assert stage.eval["fg_ari"] == stage.eval["initial_fg_ari"]
    slots = int(cfg["model"]["num_slots"])
    for v in range(2):
        assert Image.open(tmp_path / "report" / f"loci-video-{v}.png").size == (3 * 66, (slots + 4) * 66)
    # the eval table of loci-fast eval and the viz animation are in the report's section
    assert (tmp_path / stage.eval["table"]).exists() and (tmp_path / stage.eval["viz"]).exists()
    gif = Image.open(tmp_path / "report" / "loci-animation.gif")
    assert gif.n_frames > 1
    section = "\n".join(_loci_section(stage, tmp_path))
    assert "Upstream metrics" in section and "Loci-s (rnd)" in section and "Loci-s (reg)" in section
    assert "report/loci-animation.gif" in section
    # other weights than handed over: other numbers
    with torch.no_grad():
        for p in model.predictor.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=gen))
        for p in model.encoder.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=gen))
    import shutil

    shutil.rmtree(tmp_path / "loci")
    _run_folder(tmp_path / "loci", model, "loci", raw)
    evaluate_loci(stage, tmp_path, shards, videos=2)
    assert stage.eval["rgb_mse"] != stage.eval["initial_rgb_mse"]
