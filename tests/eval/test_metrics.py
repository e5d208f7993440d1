"""Our batched metrics against scipy (standard) and upstream's loops (upstream convention), to 1e-6."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from loci_fast.eval import metrics, upstream_loops
from tests.eval.cases import first_on_labels, hand_built, random_exclusive, random_overlapping

TOL = 1e-6


def _all_cases(seed: int):
    gen = torch.Generator().manual_seed(seed)
    cases = dict(hand_built(gen))
    cases["random_exclusive"] = random_exclusive(gen, 3, 5, 4, 10, 12)
    cases["random_overlapping"] = random_overlapping(gen, 3, 4, 6, 8, 11)
    cases["random_more_slots"] = random_exclusive(gen, 2, 9, 3, 7, 9)
    return cases


CASES = sorted(_all_cases(0))


@pytest.mark.parametrize("name", CASES)
def test_ari_upstream_matches_upstream_loop(name):
    pred, gt = _all_cases(11)[name]
    ours = metrics.ari(pred, gt, convention="upstream")
    torch.testing.assert_close(ours, upstream_loops.ari_loops(gt, pred), atol=TOL, rtol=0)
    # The "all" variant: GT plus the background channel against slots plus background.
    bg_gt = 1 - gt.amax(1, keepdim=True)
    bg_pred = 1 - pred.amax(1, keepdim=True)
    gt_all, pred_all = torch.cat([gt, bg_gt], 1), torch.cat([pred, bg_pred], 1)
    torch.testing.assert_close(metrics.ari(pred_all, gt_all, convention="upstream"),
                               upstream_loops.ari_loops(gt_all, pred_all), atol=TOL, rtol=0)


def test_ari_upstream_differs_from_standard_when_gt_pixels_are_unassigned():
    gen = torch.Generator().manual_seed(3)
    pred, gt = random_exclusive(gen, 4, 3, 3, 12, 12)
    up, std = metrics.ari(pred, gt, convention="upstream"), metrics.ari(pred, gt, convention="standard")
    assert (up - std).abs().max() > 1e-3  # the quirk is real on typical masks, not a no-op


@pytest.mark.parametrize("name", CASES)
def test_hungarian_upstream_matches_upstream_loop(name):
    pred, gt = _all_cases(12)[name]
    ours = metrics.hungarian_miou(pred, gt, convention="upstream")
    iou, f1, num = upstream_loops.miou_loops(pred, gt)
    torch.testing.assert_close(ours.iou_sum, iou, atol=TOL, rtol=0)
    torch.testing.assert_close(ours.f1_sum, f1, atol=TOL, rtol=0)
    torch.testing.assert_close(ours.num_objects, num, atol=0, rtol=0)


def _standard_hungarian(pred: torch.Tensor, gt: torch.Tensor):
    """Textbook matched IoU / F1 from the pixels, with scipy's assignment."""
    from scipy.optimize import linear_sum_assignment

    iou_sums, f1_sums, nums = [], [], []
    for p, g in zip(pred.numpy() > 0.8, gt.numpy() > 0.8):
        iou = np.zeros((p.shape[0], g.shape[0]))
        f1 = np.zeros_like(iou)
        for i in range(p.shape[0]):
            for j in range(g.shape[0]):
                inter, union = (p[i] & g[j]).sum(), (p[i] | g[j]).sum()
                iou[i, j] = inter / union if union else 0.0
                f1[i, j] = 2 * inter / (p[i].sum() + g[j].sum()) if union else 0.0
        rows, cols = linear_sum_assignment(iou, maximize=True)
        iou_sums.append(iou[rows, cols].sum())
        f1_sums.append(f1[rows, cols].sum())
        nums.append(g.reshape(g.shape[0], -1).any(1).sum())
    return [torch.tensor(np.array(x), dtype=torch.float64) for x in (iou_sums, f1_sums, nums)]


@pytest.mark.parametrize("name", CASES)
def test_hungarian_standard_matches_scipy(name):
    pred, gt = _all_cases(13)[name]
    ours = metrics.hungarian_miou(pred, gt, convention="standard")
    iou, f1, num = _standard_hungarian(pred, gt)
    torch.testing.assert_close(ours.iou_sum, iou, atol=TOL, rtol=0)
    torch.testing.assert_close(ours.f1_sum, f1, atol=TOL, rtol=0)
    torch.testing.assert_close(ours.num_objects, num, atol=0, rtol=0)


def test_hungarian_threshold_binarises_soft_masks():
    gen = torch.Generator().manual_seed(4)
    pred, gt = random_exclusive(gen, 3, 4, 5, 9, 9)
    soft_pred = pred * (0.81 + 0.19 * torch.rand(pred.shape, generator=gen)) + 0.79 * (1 - pred) * torch.rand(
        pred.shape, generator=gen)
    a, b = metrics.hungarian_miou(soft_pred, gt), metrics.hungarian_miou(pred, gt)
    torch.testing.assert_close(a.iou_sum, b.iou_sum, atol=0, rtol=0)
    lower = metrics.hungarian_miou(soft_pred, gt, threshold=0.5)
    assert not torch.equal(lower.iou_sum, a.iou_sum)


def test_perfect_and_permuted_score_one():
    gen = torch.Generator().manual_seed(5)
    cases = hand_built(gen)
    for name in ("perfect", "permuted"):
        pred, gt = cases[name]
        for convention in metrics.CONVENTIONS:
            m = metrics.hungarian_miou(pred, gt, convention=convention)
            assert abs(float(m.iou_sum / m.num_objects) - 1) < 1e-5, (name, convention)
            assert abs(float(metrics.ari(pred, gt, convention=convention)) - 1) < 1e-12, (name, convention)
        assert float(metrics.mbo(pred, gt).mbo()) == pytest.approx(1.0)


def _mbo_reference(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    out = []
    for p, g in zip(pred.numpy() > 0.5, gt.numpy() > 0.5):
        best = [max(((p[i] & g[j]).sum() / (p[i] | g[j]).sum() for i in range(p.shape[0])), default=0.0)
                for j in range(g.shape[0]) if g[j].any()]
        out.append(np.mean(best) if best else np.nan)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("name", CASES)
def test_mbo_matches_pixel_reference(name):
    pred, gt = _all_cases(14)[name]
    torch.testing.assert_close(metrics.mbo(pred, gt).mbo(), _mbo_reference(pred, gt), atol=TOL, rtol=0,
                               equal_nan=True)


@pytest.mark.parametrize("name", CASES)
def test_counting_and_foreground_match_upstream_loops(name):
    pred, gt = _all_cases(15)[name]
    torch.testing.assert_close(metrics.counting_accuracy(pred, gt), upstream_loops.oca_loops(pred, gt).double())
    gen = torch.Generator().manual_seed(16)
    fg_pred = torch.rand(pred.shape[0], 1, *pred.shape[2:], generator=gen, dtype=torch.float64)
    fg = gt.amax(1, keepdim=True)
    for ours, ref in zip(metrics.foreground_iou_f1(fg_pred, fg, convention="upstream"),
                         upstream_loops.fg_iou_loops(fg_pred, fg)):
        torch.testing.assert_close(ours, ref, atol=TOL, rtol=0)


def test_foreground_standard_is_exact_and_scores_empty_as_one():
    gen = torch.Generator().manual_seed(17)
    fg_pred = (torch.rand(3, 1, 6, 5, generator=gen) < 0.5).double()
    fg = (torch.rand(3, 1, 6, 5, generator=gen) < 0.5).double()
    fg_pred[2], fg[2] = 0, 0
    iou, f1 = metrics.foreground_iou_f1(fg_pred, fg, convention="standard")
    p, g = fg_pred.flatten(1) > 0, fg.flatten(1) > 0
    expect = (p & g).sum(1).double() / (p | g).sum(1).double()
    torch.testing.assert_close(iou[:2], expect[:2], atol=1e-12, rtol=0)
    torch.testing.assert_close(f1[:2], (2 * expect / (1 + expect))[:2], atol=1e-12, rtol=0)
    assert iou[2] == 1 and f1[2] == 1


def test_video_ari_is_the_ari_of_frames_concatenated_along_the_width():
    gen = torch.Generator().manual_seed(18)
    b, t, n, m, h, w = 2, 3, 4, 3, 5, 6
    frames = [random_exclusive(gen, b, n, m, h, w) for _ in range(t)]
    pred = torch.stack([f[0] for f in frames], 1)
    gt = torch.stack([f[1] for f in frames], 1)
    seq = upstream_loops.seq_ari_loops([f[1] for f in frames], [f[0] for f in frames])
    torch.testing.assert_close(metrics.fg_ari(pred, gt, per="video", convention="upstream"), seq, atol=TOL, rtol=0)
    per_frame = metrics.fg_ari(pred, gt, per="frame", convention="upstream")
    assert per_frame.shape == (b, t)
    for i in range(t):
        torch.testing.assert_close(per_frame[:, i], upstream_loops.ari_loops(frames[i][1], frames[i][0]),
                                   atol=TOL, rtol=0)


def test_counts_shared_by_frame_and_video_metrics():
    gen = torch.Generator().manual_seed(19)
    pred = (torch.rand(2, 3, 4, 5, 6, generator=gen) < 0.4).float()
    gt = (torch.rand(2, 3, 2, 5, 6, generator=gen) < 0.4).float()
    c = metrics.video_counts(pred, gt)
    direct = metrics.counts(pred.movedim(1, 2), gt.movedim(1, 2))  # a video as (B, N, T, H, W)
    torch.testing.assert_close(c.over_time().joint, direct.joint, atol=0, rtol=0)
    torch.testing.assert_close(c.over_time().pred, direct.pred, atol=0, rtol=0)
    torch.testing.assert_close(c.flat().gt, metrics.counts(pred.flatten(0, 1), gt.flatten(0, 1)).gt, atol=0, rtol=0)


def test_bool_and_float_inputs_agree_and_bad_shapes_raise():
    gen = torch.Generator().manual_seed(20)
    pred, gt = random_overlapping(gen, 2, 3, 4, 6, 6)
    torch.testing.assert_close(metrics.ari(pred.bool(), gt.bool(), convention="upstream"),
                               metrics.ari(pred.float(), gt.float(), convention="upstream"), atol=0, rtol=0)
    with pytest.raises(ValueError, match="must agree"):
        metrics.ari(pred, gt[..., :-1])
    with pytest.raises(ValueError, match="convention"):
        metrics.ari(pred, gt, convention="textbook")


def test_exclusive_keeps_first_mask_on():
    gen = torch.Generator().manual_seed(21)
    masks = (torch.rand(2, 4, 5, 5, generator=gen) < 0.5).float()
    out = metrics.exclusive(masks)
    labels = first_on_labels(masks, 4)
    torch.testing.assert_close(first_on_labels(out, 4), labels, atol=0, rtol=0)
    assert int(out.sum(1).amax()) <= 1
    disjoint = metrics.exclusive(out)
    assert disjoint is out


def test_prediction_targets_off_by_one():
    gen = torch.Generator().manual_seed(22)
    gt = torch.rand(2, 4, 3, 2, 2, generator=gen)
    assert torch.equal(metrics.prediction_targets(gt, metric="miou", convention="upstream"), gt[:, :-1])
    assert torch.equal(metrics.prediction_targets(gt, metric="seq_ari", convention="upstream"), gt[:, :-1])
    assert torch.equal(metrics.prediction_targets(gt, metric="ari", convention="upstream"), gt[:, 1:])
    assert torch.equal(metrics.prediction_targets(gt, metric="miou", convention="standard"), gt[:, 1:])


@pytest.mark.parametrize("maker", [random_exclusive, random_overlapping])
def test_label_histogram_and_matmul_counts_agree(maker):
    gen = torch.Generator().manual_seed(23)
    pred, gt = maker(gen, 3, 5, 4, 9, 10)
    fast = metrics.counts(pred.bool(), gt.bool())  # label pairs when exclusive, else the matmul
    slow = metrics.counts(pred, gt)  # float masks: always the matmul
    for name in ("joint", "gt", "pred", "pixels"):
        torch.testing.assert_close(getattr(fast, name), getattr(slow, name), atol=0, rtol=0)
    assert int(slow.joint.sum()) > 0


@pytest.mark.gpu
def test_metrics_on_cuda_equal_the_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    gen = torch.Generator().manual_seed(24)
    pred, gt = random_exclusive(gen, 3, 6, 5, 32, 40)
    for convention in metrics.CONVENTIONS:
        cpu = metrics.ari(pred, gt, convention=convention)
        torch.testing.assert_close(metrics.ari(pred.cuda(), gt.cuda(), convention=convention).cpu(), cpu,
                                   atol=1e-12, rtol=0)
        a = metrics.hungarian_miou(pred.cuda(), gt.cuda(), convention=convention)
        b = metrics.hungarian_miou(pred, gt, convention=convention)
        torch.testing.assert_close(a.iou_sum.cpu(), b.iou_sum, atol=1e-12, rtol=0)
    fast = metrics.counts(pred.cuda() > 0.5, gt.cuda() > 0.5)  # the label-histogram path on the device
    torch.testing.assert_close(fast.joint.cpu(), metrics.counts(pred, gt).joint, atol=0, rtol=0)
