"""``loci-fast bench --eval`` at tiny shapes: both implementations agree, and the results files say so."""
from __future__ import annotations

import json

import torch

from loci_fast.bench import eval_metrics


def test_bench_eval_agrees_and_writes_results(tmp_path):
    shapes = dict(batch=2, frames=3, height=16, width=20, slots=4, objects=5)
    results = eval_metrics.run_eval_bench(out_dir=tmp_path, shapes=shapes, repeats=1, log=lambda _: None)
    assert results["ok"], results["max_abs_diff"]
    assert set(results["max_abs_diff"]) == {"frame_fg_ari", "frame_ari", "iou_sum", "f1_sum", "num_objects", "oca",
                                            "fg_iou", "fg_f1", "seq_fg_ari", "seq_ari"}
    saved = json.loads((tmp_path / f"{results['path'].rsplit('/', 1)[-1]}").read_text())
    assert saved["shapes"] == shapes and saved["speedup"] > 0
    md = (tmp_path / results["path"].rsplit("/", 1)[-1].replace(".json", ".md")).read_text()
    assert "upstream-style loops" in md and "ok" in md


def test_bench_masks_are_softmax_predictions_with_background_last():
    data = eval_metrics.make_masks(batch=1, frames=2, height=16, width=16, slots=3, objects=4,
                                   device=torch.device("cpu"))
    soft, gt, fg = data["soft"], data["gt"], data["fg"]
    assert soft.shape == (1, 2, 4, 16, 16) and gt.shape == (1, 2, 4, 16, 16) and fg.shape == (1, 2, 1, 16, 16)
    torch.testing.assert_close(soft.sum(2), torch.ones(1, 2, 16, 16))
    assert int((soft > 0.8).sum(2).amax()) <= 1 and int(gt.sum(2).amax()) <= 1
    assert 0 < float((soft > 0.8).float().mean()) < 1
