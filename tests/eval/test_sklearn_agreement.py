"""ARI and AMI against scikit-learn on pixel labels (standard), and upstream's AMI loop (upstream)."""
from __future__ import annotations

import pytest
import torch

from loci_fast.eval import metrics, upstream_loops
from tests.eval.test_metrics import CASES, TOL, _all_cases
from tests.eval.cases import first_on_labels

sklearn_metrics = pytest.importorskip(
    "sklearn.metrics", reason="scikit-learn is not installed: pip install scikit-learn==1.9.1")


def _standard_labels(pred: torch.Tensor, gt: torch.Tensor):
    """Per sample (gt labels, pred labels) of the pixels in some GT mask; unassigned pixels get label N."""
    g = first_on_labels(gt, gt.shape[1])
    p = first_on_labels(pred, pred.shape[1])
    return [(gs[gs < gt.shape[1]].numpy(), ps[gs < gt.shape[1]].numpy()) for gs, ps in zip(g, p)]


@pytest.mark.parametrize("name", CASES)
def test_ari_standard_matches_sklearn(name):
    pred, gt = _all_cases(31)[name]
    expect = torch.tensor([sklearn_metrics.adjusted_rand_score(g, p) for g, p in _standard_labels(pred, gt)],
                          dtype=torch.float64)
    torch.testing.assert_close(metrics.ari(pred, gt, convention="standard"), expect, atol=TOL, rtol=0)


@pytest.mark.parametrize("name", CASES)
def test_ami_standard_matches_sklearn(name):
    pred, gt = _all_cases(32)[name]
    expect = torch.tensor([sklearn_metrics.adjusted_mutual_info_score(g, p, average_method="arithmetic")
                           for g, p in _standard_labels(pred, gt)], dtype=torch.float64)
    torch.testing.assert_close(metrics.ami(pred, gt, convention="standard"), expect, atol=TOL, rtol=0)


@pytest.mark.parametrize("name", CASES)
def test_ami_upstream_matches_upstream_loop(name):
    pred, gt = _all_cases(33)[name]
    torch.testing.assert_close(metrics.ami(pred, gt, convention="upstream"), upstream_loops.ami_loops(gt, pred),
                               atol=TOL, rtol=0)


def test_ami_conventions_score_different_pixels():
    gen = torch.Generator().manual_seed(34)
    from tests.eval.cases import random_exclusive

    pred, gt = random_exclusive(gen, 4, 3, 3, 12, 12)
    gap = (metrics.ami(pred, gt, convention="upstream") - metrics.ami(pred, gt, convention="standard")).abs()
    assert gap.max() > 1e-3


def test_fg_ari_per_video_standard_matches_sklearn_on_the_whole_video():
    gen = torch.Generator().manual_seed(35)
    from tests.eval.cases import random_exclusive

    frames = [random_exclusive(gen, 2, 4, 3, 5, 6) for _ in range(3)]
    pred = torch.stack([f[0] for f in frames], 1)
    gt = torch.stack([f[1] for f in frames], 1)
    expect = torch.tensor([sklearn_metrics.adjusted_rand_score(g, p) for g, p in
                           _standard_labels(pred.movedim(1, 2), gt.movedim(1, 2))], dtype=torch.float64)
    torch.testing.assert_close(metrics.fg_ari(pred, gt, per="video"), expect, atol=TOL, rtol=0)
