"""Import the original Loci's upstream modules (f5a7023) from ``LOCI_FAST_UPSTREAM_V1`` for parity tests.

Upstream's top-level packages ``model``/``nn``/``utils`` clash with Loci-Segmented's, so they are
imported in a context that removes them (and restores sys.modules and sys.path) afterwards. Unused
imports (torchvision, pytorch_msssim, cv2) are stubbed here, in the test harness only.
"""
import contextlib
import io
import importlib
import os
import sys
import types

import torch

ROOT = os.environ.get("LOCI_FAST_UPSTREAM_V1", "")
NAMES = ("model", "nn", "utils", "data", "torchvision", "pytorch_msssim", "cv2")
#: the draw functions upstream's Loci forward uses (global RNG), recorded in call order
DRAWS = ("randn", "rand", "normal", "randn_like")


def perturb(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Open every gate (alphas 0.3..0.8, background fade-in, size ramp) and jitter all weights."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.split(".")[-1] in ("alpha", "mask_alpha", "object_alpha", "std_alpha", "init"):
                p.copy_(torch.rand(p.shape, generator=gen) * 0.5 + 0.3)
            elif name == "initial_states.std":
                p.fill_(0.1)
            else:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)


@contextlib.contextmanager
def upstream_v1(root: str = ROOT):
    """Yields ``import_upstream(name)`` for upstream module names such as ``"model.loci"``."""
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in NAMES}
    for k in list(sys.modules):
        if k.split(".")[0] in NAMES:
            del sys.modules[k]
    tv = types.ModuleType("torchvision")
    ms = types.ModuleType("pytorch_msssim")
    ms.ms_ssim = ms.ssim = None
    sys.modules.update({"torchvision": tv, "pytorch_msssim": ms, "cv2": types.ModuleType("cv2")})
    sys.path.insert(0, root)

    def import_upstream(name: str):
        with contextlib.redirect_stdout(io.StringIO()):  # upstream prints layer widths
            return importlib.import_module(name)
    try:
        yield import_upstream
    finally:
        sys.path.remove(root)
        for k in list(sys.modules):
            if k.split(".")[0] in NAMES:
                del sys.modules[k]
        sys.modules.update(saved)


class Namespace(dict):
    """A dict whose keys also read as attributes, recursively (upstream's config access ``cfg.encoder.channels``)."""

    def __getattr__(self, key):
        try:
            v = self[key]
        except KeyError as e:
            raise AttributeError(key) from e
        return Namespace(v) if isinstance(v, dict) else v


def record_draws():
    """Log ``(name, value)`` of every torch.randn/rand/normal/randn_like call while active."""
    from tests.model.upstream_draws import record_draws as record

    return record(*DRAWS)


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """max |a - ref| / max |ref| (the absolute difference when ref is all zero)."""
    scale = ref.detach().abs().max().item()
    diff = (a.detach().double() - ref.detach().double()).abs().max().item()
    return diff / scale if scale > 0 else diff
