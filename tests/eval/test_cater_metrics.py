"""CATER snitch metrics against a plain-Python re-implementation of upstream's (nn/tracker.py,
model/scripts/training.py eval_net) on random screen positions, and (with LOCI_FAST_UPSTREAM_LOCI
pointing at a CognitiveModeling/Loci checkout) against upstream's own modules."""
from __future__ import annotations

import importlib.util
import math
import os
import sys
import types

import numpy as np
import pytest
import torch

from loci_fast.eval.cater import (CATER_CAMERA, SNITCH_Z, containment_duration, containment_pairs, grid_label,
                                  l2_versus_containment, localisation_summary, screen_to_world, snitch_localisation,
                                  tracking_l2, world_to_screen)

UPSTREAM_LOCI = os.environ.get("LOCI_FAST_UPSTREAM_LOCI")


# ---- upstream's functions, re-implemented in plain Python, following its code step by step ----

def up_screen_to_world(row: float, col: float, cam=CATER_CAMERA, z0: float = SNITCH_Z):
    a, b, c, d = cam[0]
    e, f, g, h = cam[1]
    m, n, o, p = cam[3]
    X, Y, z = col, row, z0
    den = a * f - b * e + Y * a * n - Y * b * m + X * e * n - X * f * m
    x = (b * h - d * f + Y * b * p - Y * d * n + X * f * p - X * h * n + b * g * z - c * f * z + Y * b * o * z
         - Y * c * n * z + X * f * o * z - X * g * n * z) / den
    y = -(a * h - d * e + Y * a * p - Y * d * m + X * e * p - X * h * m + a * g * z - c * e * z + Y * a * o * z
          - Y * c * m * z + X * e * o * z - X * g * m * z) / den
    return x, y, z


def up_grid_probabilities(x: float, y: float) -> list[float]:
    centres = [((k % 6) - 3 + 0.5, math.floor(k / 6) - 3 + 0.5) for k in range(36)]
    e = [math.exp(-((cx - x) ** 2 + (cy - y) ** 2)) for cx, cy in centres]
    s = sum(math.exp(v) for v in e)
    return [math.exp(v) / s for v in e]


def up_l1_grid_distance(screen, target_label):
    """L1GridDistance.forward for a batch: (l1 with the true-division row, top1, top5, labels)."""
    l1 = top1 = top5 = 0.0
    labels = []
    for (row, col), t in zip(screen, target_label):
        x, y, _ = up_screen_to_world(row, col)
        p = up_grid_probabilities(x, y)
        k = max(range(36), key=lambda i: (p[i], -i))  # argmax, first index on ties
        labels.append(k)
        l1 += abs(k % 6 - t % 6) + abs(k / 6 - t / 6)  # torch: long / 6 is a true division
        top1 += float(k == t)
        top5 += float(t in sorted(range(36), key=lambda i: -p[i])[:5])
    n = len(labels)
    return l1 / n, top1 / n, top5 / n, labels


def up_l2_distance(screen, xyz):
    out = []
    for (row, col), (tx, ty, tz) in zip(screen, xyz):
        x, y, z = up_screen_to_world(row, col)
        out.append(math.sqrt((x - tx) ** 2 + (y - ty) ** 2 + (z - tz) ** 2))
    return out


def up_l2_contained(l2_per_step, contained):
    """eval_net's bucketing: the L2 of the prediction for frame t+1 under the duration of frame t."""
    buckets: dict[int, list[float]] = {}
    for l2_b, c_b in zip(l2_per_step, contained):
        time = [c_b[0]]
        for t in range(1, len(c_b)):
            time.append(time[-1] * c_b[t] + c_b[t])
        for t in range(len(c_b) - 1):  # step t predicts frame t+1
            if time[t] > 0.5:
                buckets.setdefault(int(time[t]), []).append(l2_b[t + 1])
    return buckets


# ---- random inputs ----

def random_case(gen: torch.Generator, n: int):
    """Screen positions whose lifted points lie within 1.5 units of the grid (see the module note on
    upstream's saturated softmax far off the grid), random targets, true positions near the labels."""
    world = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 9 - 4.5
    xyz = torch.cat([world, torch.full((n, 1), SNITCH_Z, dtype=torch.float64)], 1)
    screen = world_to_screen(xyz)
    target_xyz = torch.cat([torch.rand(n, 2, generator=gen, dtype=torch.float64) * 5.98 - 2.99,
                            torch.rand(n, 1, generator=gen, dtype=torch.float64)], 1)
    return screen, grid_label(target_xyz), target_xyz


def test_projection_round_trip_and_inverse(gen):
    screen, _, _ = random_case(gen, 64)
    world = screen_to_world(screen)
    np.testing.assert_allclose(world_to_screen(world).numpy(), screen.numpy(), atol=1e-10)
    ref = [up_screen_to_world(r, c) for r, c in screen.tolist()]
    np.testing.assert_allclose(world.numpy(), np.array(ref), atol=1e-9)


def test_localisation_matches_upstream_all_four_numbers(gen):
    for n in (1, 7, 200):
        screen, label, xyz = random_case(gen, n)
        # Half the targets are the predicted cell or a neighbour, so top-1 / top-5 are not all zero.
        near = grid_label(screen_to_world(screen))[: n // 2].clamp(0, 35)
        label[: n // 2] = near
        res = snitch_localisation(screen, label, xyz)
        l1, top1, top5, labels = up_l1_grid_distance(screen.tolist(), label.tolist())
        assert res["label"].tolist() == labels
        s = localisation_summary(res)
        assert s["top1"] == pytest.approx(top1, abs=1e-12)
        assert s["top5"] == pytest.approx(top5, abs=1e-12)
        assert s["l1_upstream"] == pytest.approx(l1, abs=1e-9)
        assert s["l2"] == pytest.approx(np.mean(up_l2_distance(screen.tolist(), xyz.tolist())), abs=1e-9)
        intended = np.mean([abs(k % 6 - t % 6) + abs(k // 6 - t // 6) for k, t in zip(labels, label.tolist())])
        assert s["l1_grid"] == pytest.approx(intended, abs=1e-12)
        if n == 200:
            assert 0 < s["top1"] < s["top5"] < 1 and s["l1_grid"] != pytest.approx(s["l1_upstream"])


def test_l1_quirk_on_hand_built_misses():
    """A pure column miss of 1 costs 1 + 1/6 upstream, a pure row miss 1; intended: 1 and 1."""
    centres = torch.tensor([[0.5, 0.5, SNITCH_Z]], dtype=torch.float64)  # cell 6*3 + 3 = 21
    screen = world_to_screen(centres).repeat(2, 1)
    res = snitch_localisation(screen, torch.tensor([22, 27]), centres.repeat(2, 1))
    assert res["label"].tolist() == [21, 21]
    assert res["l1_grid"].tolist() == [1.0, 1.0]
    np.testing.assert_allclose(res["l1_upstream"].numpy(), [1 + 1 / 6, 1.0], rtol=1e-12)
    assert res["top1"].tolist() == [False, False] and res["top5"].tolist() == [True, True]


def test_float32_inputs_agree_with_float64():
    gen = torch.Generator().manual_seed(5)
    screen, label, xyz = random_case(gen, 50)
    a = snitch_localisation(screen, label, xyz)
    b = snitch_localisation(screen.float(), label, xyz.float())
    assert (a["label"] == b["label"]).float().mean() > 0.95  # float32 may flip a point on a cell border
    np.testing.assert_allclose(b["l2"].numpy(), a["l2"].numpy(), atol=1e-4)
    np.testing.assert_allclose(tracking_l2(screen.float()[None], xyz.float()[None])[0].numpy(), b["l2"].numpy())


def test_containment_duration_and_quantiles_match_upstream(gen):
    b, t = 5, 40
    contained = (torch.rand(b, t, generator=gen) < 0.7).long()
    dur = containment_duration(contained)
    for row_c, row_d in zip(contained.tolist(), dur.tolist()):
        run = []
        for i, c in enumerate(row_c):
            run.append((run[-1] if i else 0) * c + c)
        assert row_d == run
    l2 = torch.rand(b, t, generator=gen, dtype=torch.float64) * 3
    l2[:, 0] = float("nan")  # frame 0 is never predicted
    buckets = up_l2_contained(l2.tolist(), contained.tolist())
    values, durations = containment_pairs(l2, contained, upstream_offset=True)
    out = l2_versus_containment(values, durations)
    assert out["duration"].tolist() == sorted(buckets)
    for i, d in enumerate(out["duration"].tolist()):
        data = np.array(buckets[d])
        assert out["count"][i] == len(data)
        np.testing.assert_allclose(out["quantiles"][i].numpy(), np.quantile(data, [0.1, 0.25, 0.5, 0.75, 0.9]),
                                   rtol=1e-12)
        assert float(out["mean"][i]) == pytest.approx(data.mean(), rel=1e-12)
    # Without the offset each L2 is paired with its own frame's duration.
    v0, d0 = containment_pairs(l2, contained)
    keep = (dur > 0) & torch.isfinite(l2)
    assert torch.equal(v0, l2[keep]) and torch.equal(d0, dur[keep])


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="target_label"):
        snitch_localisation(torch.rand(3, 2), torch.zeros(2, dtype=torch.long), torch.rand(3, 3))
    with pytest.raises(ValueError, match="screen"):
        screen_to_world(torch.rand(3, 3))
    with pytest.raises(ValueError, match="contained"):
        containment_pairs(torch.rand(2, 3), torch.rand(2, 4))


@pytest.mark.skipif(not UPSTREAM_LOCI, reason="set LOCI_FAST_UPSTREAM_LOCI to a CognitiveModeling/Loci checkout")
def test_parity_with_upstream_tracker_module(gen):
    """upstream's nn/tracker.py itself (float32 camera, as it registers it) on the same inputs."""
    stubs = {"utils": types.ModuleType("utils"), "utils.utils": types.ModuleType("utils.utils"),
             "nn": types.ModuleType("nn"), "nn.residual": types.ModuleType("nn.residual")}
    stubs["utils.utils"].LambdaModule = stubs["nn.residual"].LinearResidual = object  # unused by the metrics
    saved = {k: sys.modules.get(k) for k in stubs}
    sys.modules.update(stubs)
    try:
        spec = importlib.util.spec_from_file_location("upstream_tracker", os.path.join(UPSTREAM_LOCI, "nn", "tracker.py"))
        tracker = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(tracker)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    cam = np.array(CATER_CAMERA)
    screen, label, xyz = random_case(gen, 300)
    screen32, xyz32 = screen.float(), xyz.float()
    l1, top1, top5, up_label = tracker.L1GridDistance(cam, SNITCH_Z)(screen32, label)
    l2, _ = tracker.L2TrackingDistance(cam, SNITCH_Z)(screen32, xyz32)
    res = snitch_localisation(screen32, label, xyz32)
    agree = (res["label"] == up_label).float().mean().item()
    assert agree > 0.97  # float32 formulas differ by rounding on cell borders
    same = res["label"] == up_label
    s = localisation_summary({k: v[same] for k, v in res.items()})
    _, t1, t5, _ = tracker.L1GridDistance(cam, SNITCH_Z)(screen32[same], label[same])
    l1s = tracker.L1GridDistance(cam, SNITCH_Z)(screen32[same], label[same])[0]
    assert s["top1"] == pytest.approx(t1.item(), abs=1e-6) and s["top5"] == pytest.approx(t5.item(), abs=1e-6)
    assert s["l1_upstream"] == pytest.approx(l1s.item(), abs=1e-5)
    np.testing.assert_allclose(res["l2"].numpy(), l2.numpy(), atol=1e-3)
    assert 0 <= l1.item() and 0 <= top1.item() <= top5.item() <= 1
