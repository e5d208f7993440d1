"""Parity with upstream's own metric code: its ``compute_ari`` / ``compute_ami`` methods, read from the
checkout in LOCI_FAST_UPSTREAM (model/lightning/loci.py) and run on the same masks as our
``upstream`` convention and our loop re-implementation. Skipped when the variable is unset."""
from __future__ import annotations

import ast
import os
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from loci_fast.eval import metrics, upstream_loops
from tests.eval.test_metrics import CASES, TOL, _all_cases

ROOT = os.environ.get("LOCI_FAST_UPSTREAM")
pytestmark = pytest.mark.skipif(not ROOT, reason="set LOCI_FAST_UPSTREAM to an upstream Loci-Segmented checkout")


def _upstream_methods() -> dict:
    """The two methods of upstream's LociModule, compiled from its source without importing Lightning."""
    einops = pytest.importorskip("einops")
    source = Path(ROOT, "model", "lightning", "loci.py").read_text()
    cls = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "LociModule")
    wanted = [f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name in ("compute_ari", "compute_ami")]
    namespace = {"th": torch, "np": np, "reduce": einops.reduce, "rearrange": einops.rearrange}
    try:
        from sklearn.metrics import adjusted_mutual_info_score
        namespace["adjusted_mutual_info_score"] = adjusted_mutual_info_score
    except ModuleNotFoundError:
        pass
    exec(compile(ast.Module(body=wanted, type_ignores=[]), "upstream-loci.py", "exec"), namespace)
    self = types.SimpleNamespace(cfg=types.SimpleNamespace(evalualte_ami=True))
    return {name: (lambda *a, f=namespace[name]: f(self, *a)) for name in ("compute_ari", "compute_ami")}


@pytest.mark.parametrize("name", CASES)
def test_ari_matches_upstream_compute_ari(name):
    pred, gt = _all_cases(41)[name]
    theirs = _upstream_methods()["compute_ari"](gt, pred)
    torch.testing.assert_close(metrics.ari(pred, gt, convention="upstream"), theirs, atol=TOL, rtol=0)
    torch.testing.assert_close(upstream_loops.ari_loops(gt, pred), theirs, atol=0, rtol=0)


@pytest.mark.parametrize("name", CASES)
def test_ami_matches_upstream_compute_ami(name):
    pytest.importorskip("sklearn")
    pred, gt = _all_cases(42)[name]
    theirs = _upstream_methods()["compute_ami"](gt, pred)  # argument order as upstream's validation step
    torch.testing.assert_close(metrics.ami(pred, gt, convention="upstream"), theirs, atol=TOL, rtol=0)
    torch.testing.assert_close(upstream_loops.ami_loops(gt, pred), theirs, atol=0, rtol=0)
