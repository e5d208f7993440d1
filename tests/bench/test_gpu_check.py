"""bench/gpu_check.py (`make gpu-check`): its steps parse, and the dry run passes on this CPU."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from loci_fast.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_step_is_a_valid_command(tmp_path):
    gc = _gpu_check()
    steps = gc.steps(tmp_path, 90)
    names = [s["name"] for s in steps]
    assert names[:6] == ["compile-gate", "gpu-tests", "train-step", "train-step-loci", "eval-loci", "bench-quick"]
    assert names[6:] == [f"bench-{op}" for op in gc.ops()]
    parser = build_parser()
    for step in steps:
        if "cli" in step:
            args = parser.parse_args(step["cli"])
            assert args.out == str(tmp_path)  # every results file lands in the one folder
    train = parser.parse_args(steps[2]["cli"])
    assert (train.batch_size, train.input_size, train.dtype, train.backends) == (32, 256, "bf16", ["reference", "triton"])
    loci = parser.parse_args(steps[3]["cli"])
    assert (loci.train_step, loci.bo, loci.dtype, loci.backends) == ("configs/loci-s.json", "16,32,64,128", "fp32",
                                                                     ["reference", "triton"])
    files = gc.gpu_test_files()
    assert "tests/kernels/test_hyperconv.py" in files and all((ROOT / f).is_file() for f in files)
    assert all(f"--deselect={t}" in steps[1]["argv"] for t in gc.DUPLICATE_TESTS)


def test_ops_read_from_the_source_match_the_package():
    from loci_fast.kernels import OPS

    assert tuple(_gpu_check().ops()) == OPS


@pytest.mark.slow
def test_dry_run_passes_without_deepspeed_and_webdataset():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run"], capture_output=True,
                          text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "no deepspeed/webdataset: imports ok" in proc.stdout and "gpu-check dry run: ok" in proc.stdout
