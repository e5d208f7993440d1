"""`loci-fast bench --compile`: the verdicts, and the real compile path on a toy kernel.

The full gate (every kernel of loci_fast.kernels, both triton versions) runs in CI as
`make -j2 compile-gate`, not here.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loci_fast.bench import compile_gate as gate

ROOT = Path(__file__).resolve().parents[2]

LOG = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_toy_kernel' for 'sm_90a'
ptxas info    : Function properties for _toy_kernel
    {stack} bytes stack frame, {st} bytes spill stores, {ld} bytes spill loads
ptxas info    : Used {regs} registers, used 1 barriers, 380 bytes cmem[0]
"""


@pytest.mark.parametrize("regs, stack, st, ld", [(40, 0, 0, 0), (255, 24, 16, 8)])
def test_parse_ptxas_log(regs, stack, st, ld):
    got = gate.parse_ptxas_log(LOG.format(regs=regs, stack=stack, st=st, ld=ld))
    assert got == {"registers": regs, "stack": stack, "spill_stores": st, "spill_loads": ld}


def test_occupancy_follows_the_sm90_limits():
    h100 = gate.ARCHS[90]
    # 255 registers: 8 warps fit the 64K register file, so 2 blocks of 4 warps.
    assert gate.occupancy(255, 0, 4, h100) == {"blocks_per_sm": 2, "occupancy": 8 / 64, "limited_by": "registers"}
    # 32 registers: the 64 warp slots limit first.
    assert gate.occupancy(32, 0, 4, h100)["blocks_per_sm"] == 16
    # 100 KiB of shared memory: two blocks fit the SM's 228 KiB.
    assert gate.occupancy(32, 100 * 1024, 4, h100) == {"blocks_per_sm": 2, "occupancy": 8 / 64, "limited_by": "shared"}


def _raw(rows, found=("_a_kernel", "_b_kernel"), launched=("_a_kernel", "_b_kernel")):
    return {"arch": 90, "rows": rows, "kernels_found": {"toy": list(found)}, "kernels_launched": list(launched)}


def _row(**kw):
    row = {"op": "toy", "kernel": "_a_kernel", "dtype": "fp32", "config": "BLOCK=64", "case": "c", "registers": 64,
           "stack": 0, "spill_stores": 0, "spill_loads": 0, "shared": 0, "num_warps": 4, "num_stages": 3}
    row.update(kw)
    return row


def test_judge_passes_a_clean_run_and_names_every_problem():
    assert gate.judge(_raw([_row()]), 0)["ok"]
    res = gate.judge(_raw([_row(spill_stores=8, spill_loads=8), _row(kernel="_b_kernel", shared=300_000),
                           {**_row(), "error": "CompilationError: K >= 16"}], launched=("_a_kernel", "_b_kernel")), 0)
    assert not res["ok"] and [r["status"] for r in res["rows"]] == ["FAIL", "FAIL", "FAIL"]
    assert any("spills 8 B stores + 8 B loads > 0 B" in p for p in res["problems"])
    assert any("shared memory 300000 B > 232448 B" in p for p in res["problems"])
    assert any("K >= 16" in p for p in res["problems"])
    assert gate.judge(_raw([_row(spill_stores=8, spill_loads=8)]), 16)["ok"]  # within --max-spill-bytes


def test_judge_fails_a_kernel_no_case_launches():
    res = gate.judge(_raw([_row()], launched=("_a_kernel",)), 0)
    assert not res["ok"] and res["unlaunched"] == ["toy._b_kernel"]
    assert "toy._b_kernel: no case launches it" in res["problems"]


TOY = '''
import json, sys
import torch, triton, triton.language as tl
from loci_fast.bench import compile_gate as gate

@triton.jit
def _toy_dot_kernel(a_ptr, b_ptr, out_ptr, K: tl.constexpr):
    m = tl.arange(0, 16)
    k = tl.arange(0, K)
    a = tl.load(a_ptr + m[:, None] * K + k[None, :])
    b = tl.load(b_ptr + k[:, None] * 16 + m[None, :])
    tl.store(out_ptr + m[:, None] * 16 + m[None, :], tl.dot(a, b))

gate._install_stand_in_driver(90)
with gate._Recorder(real_driver=False) as rec:
    for k in (8, 16):
        rec.context = {"op": "toy", "case": f"K{k}", "dtype": "fp16"}
        a = torch.empty(16 * k, device="meta", dtype=torch.float16)
        out = torch.empty(256, device="meta", dtype=torch.float32)
        assert _toy_dot_kernel[(1,)](a, a, out, K=k) is None or True  # compiled, never launched
print(json.dumps({"rows": list(rec.rows.values()), "launched": sorted(rec.launched)}))
'''


def test_real_compile_for_sm90_without_a_gpu(tmp_path):
    """The stand-in driver and the bundled ptxas: a tl.dot with K = 8 (accepted by the interpreter)
    fails for sm_90, K = 16 compiles to cubin with a register count and no spills."""
    script = tmp_path / "toy_gate.py"
    script.write_text(TOY)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=str(ROOT), TRITON_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    by_k = {r["config"].split(",")[0]: r for r in out["rows"]}
    assert "error" in by_k["K=8"] and "registers" not in by_k["K=8"]
    ok = by_k["K=16"]
    assert ok["registers"] > 0 and ok["spill_stores"] == ok["spill_loads"] == 0 and ok["num_warps"] == 4
    assert out["launched"] == ["_toy_dot_kernel"]


def test_every_op_module_has_kernels_and_gpu_cases():
    """What the gate iterates: each op's *_kernel functions and its GPU benchmark cases (CI compiles them)."""
    code = ("import json; from loci_fast.bench import compile_gate as g; from loci_fast.kernels import OPS; "
            "print(json.dumps({op: [sorted(g.kernel_names(op)), len(g.gate_cases(op, 'all'))] for op in OPS}))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout)
    for op, (kernels, n_cases) in found.items():
        assert kernels and all(k.startswith(f"_{op}_") and k.endswith("_kernel") for k in kernels), op
        assert n_cases > 0, op
    assert found["hyperconv"][0] == ["_hyperconv_bwd_kernel", "_hyperconv_fwd_kernel"]
