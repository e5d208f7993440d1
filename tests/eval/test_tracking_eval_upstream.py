"""Our CATER rollout and metrics against upstream's own evaluation loop (``eval_net``, f5a7023, §4.1).

Needs LOCI_FAST_UPSTREAM_V1. Same weights (upstream's, perturbed), one batch of 2 random videos, the
global RNG seeded alike on both sides (our step draws in upstream's order when no noise is injected):
every per-sample line upstream prints (predicted cell, lifted world position), its running top-1,
top-5, L1 and L2, and its L2-versus-containment curves equal ours.
"""
from __future__ import annotations

import contextlib
import io
import re

import numpy as np
import pytest
import torch

from loci_fast.eval import cater
from loci_fast.eval.cater_rollout import rollout_snitch
from loci_fast.loci_v1 import LociV1
from loci_fast.loci_v1.tracker import CATER_CAMERA, CATER_ZERO_ELEVATION
from tests.loci_v1.configs import frame_size, tiny
from tests.loci_v1.upstream_v1 import Namespace, perturb, ROOT, upstream_v1

pytestmark = pytest.mark.skipif(not ROOT, reason="set LOCI_FAST_UPSTREAM_V1 to an upstream Loci checkout (f5a7023)")

T, B, WARMUP = 6, 2, 2
FLOAT = r"(-?\d+\.\d+)"



def plots(text: str) -> list[dict[int, float]]:
    """upstream's six pgfplots blocks: q90, q75, q50, mean, q25, q10, each {duration: value}."""
    blocks = re.findall(r"plot coordinates \{\n(.*?)\};", text, flags=re.S)
    return [{int(d): float(v) for d, v in re.findall(r"\((\d+),(-?[\d.]+)\)", b)} for b in blocks]


@contextlib.contextmanager
def stubbed(*names: str):
    """Empty stand-ins for modules upstream's training script imports but eval_net never uses."""
    import sys
    import types

    missing = [n for n in names if n not in sys.modules]
    for n in missing:
        mod = types.ModuleType(n)
        mod.jsmin = None
        sys.modules[n] = mod
    try:
        yield
    finally:
        for n in missing:
            sys.modules.pop(n, None)


def test_rollout_and_metrics_match_upstreams_eval_net(gen):
    cfg = tiny(1)
    h, w = frame_size(cfg)
    frames = torch.rand(B, T, 3, h, w, generator=gen)
    bg = torch.rand(B, 1, 3, h, w, generator=gen)
    xyz = (torch.rand(B, T, 3, generator=gen) * 5 - 2.5).double()
    label = cater.grid_label(xyz[:, -1])
    contained = torch.tensor([[0, 1, 1, 0, 1, 1], [1, 1, 1, 1, 0, 0]], dtype=torch.float64)
    with upstream_v1() as imp, stubbed("jsmin"):
        up = imp("model.loci").Loci(Namespace(cfg), camera_view_matrix=CATER_CAMERA,
                                    zero_elevation=CATER_ZERO_ELEVATION, teacher_forcing=WARMUP)
        training = imp("model.scripts.training")
        perturb(up, gen)
        ours = LociV1.from_config(cfg, teacher_forcing=WARMUP)
        ours.load_state_dict(up.state_dict(), strict=True)
        ecfg = Namespace(sequence_len=T + 1, teacher_forcing=WARMUP, datatype="cater", statistics_offset=0,
                         msssim=False)
        dataset = Namespace(cam=CATER_CAMERA, z=CATER_ZERO_ELEVATION)
        printed = io.StringIO()
        torch.manual_seed(21)
        with contextlib.redirect_stdout(printed):
            training.eval_net(up, "test", dataset, [(frames, bg, xyz, label, contained)], "cpu", ecfg, 0)
    torch.manual_seed(21)
    snitch = rollout_snitch(ours.eval(), frames, bg[:, 0], None, steps=T - 1).double()
    text = printed.getvalue()

    final = cater.snitch_localisation(snitch[:, -1], label, xyz[:, -1])
    lines = re.findall(rf"Label: (\d+), Target: (\d+), World-Position: {FLOAT}\|{FLOAT}\|{FLOAT}", text)
    assert len(lines) == B
    assert [int(a) for a, *_ in lines] == final["label"].tolist()
    assert [int(b) for _, b, *_ in lines] == label.tolist()
    np.testing.assert_allclose([[float(v) for v in rest] for _, _, *rest in lines], final["world"].numpy(),
                               atol=2e-5)
    last = text.strip().splitlines()
    status = [s for s in last if "top1:" in s][-1]
    top1, top5 = (float(x) for x in re.search(rf"top1: {FLOAT}, top5: {FLOAT}", status).groups())
    l1, l2 = (float(x) for x in re.search(rf"L1:, {FLOAT}, L2: {FLOAT}", status).groups())
    got = cater.localisation_summary(final)
    assert top1 == pytest.approx(100 * got["top1"], abs=1e-4) and top5 == pytest.approx(100 * got["top5"], abs=1e-4)
    assert l1 == pytest.approx(got["l1_upstream"], abs=2e-6) and l2 == pytest.approx(got["l2"], abs=2e-5)

    l2_track = torch.full((B, T), float("nan"), dtype=torch.float64)
    l2_track[:, 1:] = cater.tracking_l2(snitch[:, 1:], xyz[:, 1:])
    c = cater.l2_versus_containment(*cater.containment_pairs(l2_track, contained, upstream_offset=True))
    want = {int(d): (q, m) for d, q, m in zip(c["duration"], c["quantiles"].tolist(), c["mean"].tolist())}
    q90, q75, q50, mean, q25, q10 = plots(text)
    assert sorted(q50) == sorted(want) and want
    for d, (q, m) in want.items():
        np.testing.assert_allclose([q10[d], q25[d], q50[d], q75[d], q90[d], mean[d]], [*q, m], atol=1.5e-4)
