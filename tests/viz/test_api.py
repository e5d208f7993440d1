"""``loci_fast.viz.render``, the Python API the demo calls: a run's checkpoint folder, each Loci-s mode,
and (slow) a real `loci-fast train --stage loci` run."""
from __future__ import annotations

import json

import pytest
import torch

from loci_fast.viz import render
from tests.viz.helpers import LOCI_CONFIG, loci_shard


def _run_folder(tmp, state: dict, stage: str = "loci"):
    """The checkpoint folder layout a training run writes (weights, client state, completion mark)."""
    from safetensors.torch import save_file

    from loci_fast.train import checkpoint as ckpt

    tag = tmp / "run" / ckpt.CHECKPOINT_DIR / ckpt.tag_for(3)
    tag.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tag / ckpt.WEIGHTS), metadata={"format": "loci-fast"})
    (tag / ckpt.CLIENT).write_text(json.dumps({"config": json.loads(LOCI_CONFIG.read_text()), "stage": stage,
                                               "step": 3}))
    (tag / ckpt.COMPLETE).write_text("ok\n")
    return tmp / "run"


@pytest.fixture(scope="module")
def segmentation_run(tmp_path_factory):
    """A run folder holding a segmentation-mode model (with its position proposal)."""
    from loci_fast.config import load_config
    from loci_fast.model.loci_model import LociModel

    tmp = tmp_path_factory.mktemp("viz-api")
    torch.manual_seed(1)
    model = LociModel.from_config(load_config(LOCI_CONFIG, {"model.inference_mode": "segmentation"}))
    return _run_folder(tmp, model.state_dict()), loci_shard(tmp / "data", frames=2)


def test_render_a_run_folder_in_segmentation_mode(segmentation_run, tmp_path):
    run, shard = segmentation_run
    index = render(run, shard, tmp_path / "seg", mode="segmentation", videos=(0,), panels=False, progress=False)
    assert index == tmp_path / "seg" / "index.html" and index.exists()
    manifest = json.loads((tmp_path / "seg" / "manifest.json").read_text())
    assert manifest["mode"] == "segmentation" and manifest["videos"][0]["times"] == [-3, -2, -1, 0]
    assert "(segmentation mode)" in index.read_text()


@pytest.mark.slow
def test_render_regularization_mode_ignores_the_unused_proposal(segmentation_run, tmp_path):
    run, shard = segmentation_run
    index = render(run, shard, tmp_path / "reg", mode="regularization", panels=False, progress=False)
    assert json.loads((index.parent / "manifest.json").read_text())["mode"] == "regularization"


@pytest.mark.slow
def test_render_a_real_training_run(tmp_path):
    from tests.train.helpers import launcher, run, synth_shards, train_args

    shards = synth_shards(tmp_path, videos=2)
    out = tmp_path / "run"
    proc = run(launcher("python") + train_args(LOCI_CONFIG, shards, out, "--max-steps", "1", "--save-every", "1",
                                               stage=None), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    index = render(out, shards, tmp_path / "viz", videos=(1,), panels=False, progress=False)
    manifest = json.loads((index.parent / "manifest.json").read_text())
    assert manifest["videos"][0]["index"] == 1 and (index.parent / manifest["videos"][0]["folder"] /
                                                    "animation.gif").exists()
