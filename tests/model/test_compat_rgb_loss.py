"""Compat flag ``rgb_loss_batch_scaled`` (reference §24.7): upstream's RGB loss is B times the image mean
(its all-ones mask broadcasts over the batch); off, the RGB terms are the plain mean. Depth terms and
everything the model computes stay the same."""
import pytest
import torch

from loci_fast.config import load_config
from loci_fast.model.compat import resolve_compat
from loci_fast.train.stages import get_stage

TINY_LOCI = "configs/tiny/loci-s.json"
RGB = ("rgb_loss", "rgb_l1_loss", "rgb_ssim_loss")


def _chunk_terms(flag: bool | None, batch_size: int):
    overrides = {"model.batch_size": batch_size}
    if flag is not None:
        overrides["model.compat"] = {"rgb_loss_batch_scaled": flag}
    cfg = load_config(TINY_LOCI, overrides)
    stage = get_stage("loci")
    torch.manual_seed(0)
    model = stage.build_model(cfg)
    batch = stage.example_batch(cfg, torch.device("cpu"), torch.float32)
    torch.manual_seed(1)  # the same draws in every run
    with torch.no_grad():
        out = stage.forward(model, batch)
    return model, out


def test_default_reproduces_upstream():
    assert resolve_compat({})["rgb_loss_batch_scaled"] is True
    model, _ = _chunk_terms(None, 2)
    assert model.batch_scaled_rgb is True


@pytest.mark.parametrize("batch_size", [1, 3])
def test_off_divides_the_rgb_terms_by_the_batch_size(batch_size):
    _, scaled = _chunk_terms(True, batch_size)
    model, plain = _chunk_terms(False, batch_size)
    assert model.batch_scaled_rgb is False
    for part in ("reconstruction", "prediction"):
        for k in RGB:
            a, b = scaled.metrics[f"{part}_{k}"], plain.metrics[f"{part}_{k}"]
            assert float(b) > 0
            torch.testing.assert_close(a, b * batch_size, rtol=1e-6, atol=0)
        for k in ("depth_loss", "depth_l1_loss", "depth_ssim_loss"):
            assert torch.equal(scaled.metrics[f"{part}_{k}"], plain.metrics[f"{part}_{k}"])
    same = torch.equal(scaled.loss, plain.loss)
    assert same == (batch_size == 1)
