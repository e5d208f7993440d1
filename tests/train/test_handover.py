"""--init-from: the explicit stage mappings on the real LociPretrainer, and what they refuse."""
import pytest
import torch
from safetensors.torch import save_file

from loci_fast.config import load_config
from loci_fast.model.pretrainer import LociPretrainer
from loci_fast.train.errors import TrainError
from loci_fast.train.handover import init_from
from loci_fast.train.stages import get_stage

CFG = "configs/demo/pretrain-encoder-decoder-stage1.json"


@pytest.fixture(scope="module")
def cfg():
    return load_config(CFG)


def _source(tmp_path, cfg, stage, gen, name=None, overrides=None):
    """A LociPretrainer with fresh random weights, saved like `loci-fast export` does."""
    model_cfg = cfg.replace(overrides or {})["model"]
    weights = {k: torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
               for k, v in LociPretrainer(model_cfg).state_dict().items()}
    path = tmp_path / f"{name or stage}.safetensors"
    meta = {"stage": stage, "step": "7"} if stage != "upstream" else {}
    save_file({k: v.contiguous() for k, v in weights.items()}, str(path), metadata=meta)
    return path, weights


def test_decoder_checkpoints_fill_stage1(tmp_path, cfg, gen):
    model = LociPretrainer(cfg["model"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sources = {m: _source(tmp_path, cfg, m, gen) for m in ("mask", "depth", "rgb")}
    report = init_from(model, get_stage("stage1"), [str(sources[m][0]) for m in sources])
    state = model.state_dict()
    for modality, (_, weights) in sources.items():
        own = [k for k in weights if k.startswith(f"{modality}_pretrainer.")]
        assert own and all(torch.equal(state[k], weights[k]) for k in own)
        dec = [k for k in own if k.startswith(f"{modality}_pretrainer.decoder.")]
        for key in dec:
            target = f"decoder.to_{modality}." + key[len(f"{modality}_pretrainer.decoder."):]
            assert torch.equal(state[target], weights[key])
    # The encoder is not in any decoder checkpoint: it keeps its initial weights.
    assert all(torch.equal(state[k], before[k]) for k in state if k.startswith("encoder."))
    assert any("decoder.to_mask" in line for line in report)


def test_stage1_fills_stage2_whole(tmp_path, cfg, gen):
    path, weights = _source(tmp_path, cfg, "stage1", gen)
    model = LociPretrainer(cfg["model"])
    report = init_from(model, get_stage("stage2"), [str(path)])
    assert all(torch.equal(model.state_dict()[k], weights[k]) for k in weights)
    assert f"{len(weights)} of {len(weights)} tensors loaded" in report[-1]


def test_converted_upstream_checkpoint_loads_one_to_one(tmp_path, cfg, gen):
    path, weights = _source(tmp_path, cfg, "upstream", gen)
    model = LociPretrainer(cfg["model"])
    init_from(model, get_stage("stage2"), [str(path)])
    assert all(torch.equal(model.state_dict()[k], weights[k]) for k in weights)


def test_refusals(tmp_path, cfg, gen):
    model = LociPretrainer(cfg["model"])
    stage2_ckpt, _ = _source(tmp_path, cfg, "stage2", gen)
    with pytest.raises(TrainError, match="'stage2' checkpoint cannot initialise stage 'stage1'"):
        init_from(model, get_stage("stage1"), [str(stage2_ckpt)])
    mask_a, _ = _source(tmp_path, cfg, "mask", gen, "a")
    mask_b, _ = _source(tmp_path, cfg, "mask", gen, "b")
    with pytest.raises(TrainError, match="also set by"):
        init_from(model, get_stage("stage1"), [str(mask_a), str(mask_b)])
    bigger, _ = _source(tmp_path, cfg, "mask", gen, "big", {"model.gestalt_size": 128, "model.predictor.channels": 512})
    with pytest.raises(TrainError, match="has shape"):
        init_from(model, get_stage("stage1"), [str(bigger)])
    with pytest.raises(TrainError, match="does not exist"):
        init_from(model, get_stage("stage1"), [str(tmp_path / "missing.safetensors")])
