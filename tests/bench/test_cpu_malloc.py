"""``bench --train-step --keep-freed-memory``: glibc keeps freed blocks (mallopt), the numbers do not change.

How much it saves depends on glibc's heap state (measured in bench/results/2026-12-01-cpu-loci-profile.md:
about half the CPU time of a full-width Loci-s chunk), so the tests check that it takes effect and that
the losses stay bit-identical, not a speed-up. Each run is its own process: the setting lasts a process.
"""
import json
import subprocess
import sys

import pytest

TINY_LOCI = "configs/tiny/loci-s.json"


def _bench(tmp_path, *flags):
    out = tmp_path / ("keep" if flags else "default")
    subprocess.run([sys.executable, "-m", "loci_fast.cli", "bench", "--train-step", TINY_LOCI, "--bo", "4",
                    "--backends", "reference", "--dtype", "fp32", "--steps", "2", "--warmup", "0", "--threads", "1",
                    "--out", str(out), *flags], check=True, capture_output=True, text=True)
    return json.loads(next(out.glob("*.json")).read_text())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_mallopt_is_taken_and_leaves_the_losses_bit_identical(tmp_path):
    default, keep = _bench(tmp_path), _bench(tmp_path, "--keep-freed-memory")
    assert default["malloc"] == "default" and keep["malloc"] == "keep freed memory (mmap off)"
    assert default["threads"] == keep["threads"] == 1
    rows = [(r["first_loss"], r["last_loss"]) for r in (default["rows"][0], keep["rows"][0])]
    assert rows[0] == rows[1] and rows[0][0] != rows[0][1]
