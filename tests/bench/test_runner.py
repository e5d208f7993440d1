"""The suite runner's plumbing: gates catch wrong ops, timed runs compute ratios, files get written.

Timings here use a CPU wall-clock timer only to exercise the bookkeeping; they prove nothing
about speed (that needs a GPU and CUDA events).
"""
import json
import time

import pytest
import torch

from loci_fast.bench import runner
from loci_fast.bench.case import BenchCase


def _silu_case(fused, label="toy"):
    def make_inputs(dtype, device, gen):
        x = torch.randn(64, 33, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
        return {"x": x.requires_grad_(True)}

    return BenchCase(op="toy", label=label, shape={"n": 64, "c": 33}, make_inputs=make_inputs,
                     reference=lambda x: x * torch.sigmoid(x), fused=fused,
                     bytes_fwd=lambda e: 2 * 64 * 33 * e, bytes_bwd=lambda e: 3 * 64 * 33 * e,
                     dtypes=(torch.float32,))


def _cpu_timer(fn):
    fn()
    t0 = time.perf_counter()
    for _ in range(3):
        fn()
    return (time.perf_counter() - t0) / 3 * 1e3


def test_gate_passes_a_correct_op_and_fails_a_wrong_one():
    good = runner.check_case(_silu_case(lambda x: torch.nn.functional.silu(x)), torch.float32, torch.device("cpu"))
    assert good["ok"] and good["max_rel_err"] < 1e-5
    assert set(good["errors"]) == {"out0", "grad_x"}
    # Right values, wrong gradient: only the gradient gate can catch it.
    wrong_grad = lambda x: x.detach() * torch.sigmoid(x.detach()) + 0 * x  # noqa: E731
    bad = runner.check_case(_silu_case(wrong_grad), torch.float32, torch.device("cpu"))
    assert not bad["ok"] and bad["errors"]["out0"] < 1e-5 and bad["errors"]["grad_x"] > 1e-2


def test_suite_writes_correctness_only_results(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "load_cases", lambda ops, quick, device: [_silu_case(lambda x: torch.nn.functional.silu(x))])
    res = runner.run_suite(["toy"], out_dir=tmp_path, device=torch.device("cpu"), log=lambda s: None)
    assert res["ok"] and res["mode"] == "correctness-only"
    data = json.loads(open(res["path"]).read())
    assert data["cases"][0]["gate"]["ok"] and "times_ms" not in data["cases"][0]
    md = (tmp_path / (res["path"].rsplit("/", 1)[1][:-5] + ".md")).read_text()
    assert "correctness-only" in md and "| toy | toy | fp32 | ok |" in md


def test_timed_suite_computes_ratios_and_bandwidth(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "load_cases", lambda ops, quick, device: [_silu_case(lambda x: torch.nn.functional.silu(x))])
    res = runner.run_suite(["toy"], out_dir=tmp_path, device=torch.device("cpu"), timer=_cpu_timer,
                           compile_reference=False, log=lambda s: None)
    case = res["cases"][0]
    assert res["mode"] == "timed" and res["copy_bandwidth_gbs"] > 0
    for impl in ("reference", "ours"):
        assert case["times_ms"][impl]["both"] > 0
    ratio = case["times_ms"]["reference"]["both"] / case["times_ms"]["ours"]["both"]
    assert case["speedup_vs_reference"]["both"] == pytest.approx(ratio)
    assert case["bytes"]["both"] == 5 * 64 * 33 * 4
    assert case["bandwidth_gbs"]["both"] == pytest.approx(case["bytes"]["both"] / (case["times_ms"]["ours"]["both"] * 1e6))


def test_failed_gate_marks_the_run_failed(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "load_cases", lambda ops, quick, device: [_silu_case(lambda x: torch.tanh(x))])
    res = runner.run_suite(["toy"], out_dir=tmp_path, device=torch.device("cpu"), log=lambda s: None)
    assert not res["ok"] and not res["cases"][0]["gate"]["ok"]


def test_unknown_op_is_named():
    with pytest.raises(ValueError, match="unknown op 'nope'"):
        runner.load_cases(["nope"], quick=True, device=torch.device("cpu"))


def test_suite_measures_data_decode_throughput(tmp_path, monkeypatch):
    import loci_fast.bench.decode as decode_mod
    from loci_fast.data.synth.run import SynthConfig, run_synth

    shards = tmp_path / "shards"
    run_synth(shards, 2, SynthConfig(frames=4, size=32, min_objects=2, max_objects=3, seed=5),
              shard_videos=2, workers=1, progress=False, log=lambda s: None)
    monkeypatch.setattr(runner, "load_cases", lambda ops, quick, device: [])
    short_decode = _wrap_short(decode_mod)
    monkeypatch.setattr(decode_mod, "decode_throughput", short_decode)
    res = runner.run_suite(["toy"], out_dir=tmp_path / "res", device=torch.device("cpu"), quick=True,
                           data=str(shards), log=lambda s: None)
    views = {r["view"]: r for r in res["decode"]}
    assert set(views) == {"iter_videos", "video_chunks", "object_crops", "frame_pairs"}
    assert all(r["frames"] > 0 and r["frames_per_s"] > 0 for r in views.values())
    md = next((tmp_path / "res").glob("*.md")).read_text()
    assert "| object_crops | 1 |" in md
    assert short_decode.calls == 1


def _wrap_short(decode_module):
    """decode_throughput with a short clock, so the test measures plumbing, not patience."""
    real = decode_module.decode_throughput

    def short(paths, **kw):
        short.calls += 1
        kw["seconds"] = 0.3
        return real(paths, **kw)

    short.calls = 0
    return short


def test_an_op_without_cases_is_skipped_never_ok(tmp_path, monkeypatch):
    """`bench` never reports ok for an op it skipped (here: no benchmark module for 'missing')."""
    toy = _silu_case(lambda x: torch.nn.functional.silu(x))
    monkeypatch.setattr(runner, "load_cases", lambda ops, quick, device: [toy])
    res = runner.run_suite(["toy", "missing"], out_dir=tmp_path, device=torch.device("cpu"), log=lambda s: None)
    assert res["op_status"] == {"toy": "ok", "missing": "skipped"} and not res["ok"]
    assert any(s["op"] == "missing" for s in res["skipped"])
    md = (tmp_path / (res["path"].rsplit("/", 1)[1][:-5] + ".md")).read_text()
    assert "missing **skipped**" in md and "- skipped: missing" in md


def test_half_precision_cases_skipped_on_cpu_are_listed(tmp_path, monkeypatch):
    case = _silu_case(lambda x: torch.nn.functional.silu(x))
    case.dtypes = (torch.float32, torch.bfloat16)
    monkeypatch.setattr(runner, "load_cases", lambda ops, quick, device: [case])
    res = runner.run_suite(["toy"], out_dir=tmp_path, device=torch.device("cpu"), log=lambda s: None)
    assert [c["dtype"] for c in res["cases"]] == ["fp32"] and res["ok"]
    assert [(s["dtype"], "GPU only" in s["reason"]) for s in res["skipped"]] == [("bf16", True)]


def test_cli_exits_non_zero_when_an_op_is_skipped(tmp_path, monkeypatch):
    from loci_fast.cli import main

    monkeypatch.setattr(runner, "load_cases", lambda ops, quick, device: [])
    assert main(["bench", "--ops", "composite", "--out", str(tmp_path), "--no-compile"]) == 1
