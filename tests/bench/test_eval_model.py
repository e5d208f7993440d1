"""``loci-fast bench --eval-model``: end-to-end Loci-s evaluation frames/s, written as results files."""
from __future__ import annotations

import json

import pytest

from loci_fast.bench.eval_model import parse_batches, run_eval_model_bench


def test_parse_batches_accepts_sizes_and_max_and_refuses_the_rest():
    assert parse_batches("1, 4,max") == [1, 4, "max"]
    for bad in ("0", "1,x", "", "-2"):
        with pytest.raises(ValueError, match="--eval-batches"):
            parse_batches(bad)


def test_eval_model_bench_writes_frames_per_second(tmp_path):
    res = run_eval_model_bench("configs/tiny/loci-s.json", batches=[1, "max"], repeats=1, out_dir=tmp_path)
    rows = json.loads(open(res["path"]).read())["rows"]
    # On the CPU "max" is batch 1; every row scored some frames in positive time.
    assert [r["batch_size"] for r in rows] == [1, 1]
    assert all(r["frames_per_s"] > 0 for r in rows)
    assert "| 1 |" in next(tmp_path.glob("*-eval-loci.md")).read_text()
