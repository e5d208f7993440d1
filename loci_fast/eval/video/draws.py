"""Random draws per video, so a video's numbers do not depend on its batch, its rank or the order.

Loci-s draws its eval-time noise (§14.1: the uncertainty ε, ObjectDiscovery's uniform noise and
pixel sampling, the priority jitter, the mask drop's gestalt noise, the GateL0RD gate noise) from
the global torch RNG with batch-shaped calls, so with one global seed sample b's noise depends on
the samples before it. :class:`PerVideoDraws` replaces those calls, while active, by draws from one
generator per video: a draw whose leading dim is B·k gives video b the rows b·k .. b·k+k−1 drawn
from its own generator, exactly what a batch of one would draw. Draws that are not batch-shaped
(the gate noise, one (Hd,) vector for the whole batch) advance every video's generator and use
the first video's values; they are zeros at the shipped gate noise level 0.

Upstream's "regularization" mask drop subtracts the *batch* mean of the slot similarities; at
upstream's evaluation batch of 1 that is the sample's own mean, so evaluation runs the mask drop
one video at a time (:meth:`PerVideoDraws.one_by_one`).
"""
from __future__ import annotations

import contextlib
import hashlib
from typing import Callable, Iterator, Sequence

import torch

PATCHED = ("randn_like", "rand_like", "multinomial", "normal")


def video_seed(seed: int, video: str) -> int:
    """A 63-bit generator seed from the run's seed and the video's id (stable across processes)."""
    digest = hashlib.sha256(f"{int(seed)}\0{video}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class PerVideoDraws:
    """``with PerVideoDraws(seeds, device):`` routes torch's draw functions to per-video generators.

    ``seeds`` holds one seed per sample of the batch (see :func:`video_seed`). Not thread safe: it
    patches module attributes of ``torch`` for the duration of the block.
    """

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu"):
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
        self.active = list(range(len(self.generators)))
        self._originals: dict[str, Callable] = {}

    # -- the replacements ------------------------------------------------------------------------
    def _split(self, shape: torch.Size, what: str) -> tuple[list[torch.Generator], int]:
        gens = [self.generators[i] for i in self.active]
        if not shape or shape[0] % len(gens):
            raise RuntimeError(f"PerVideoDraws: a {what} draw of shape {tuple(shape)} is not batch-shaped for "
                               f"{len(gens)} video(s); evaluation cannot give it per-video values")
        return gens, shape[0] // len(gens)

    def _like(self, fn: Callable, name: str) -> Callable:
        def draw(x: torch.Tensor, *args, dtype=None, device=None, **kwargs) -> torch.Tensor:
            gens, rows = self._split(x.shape, name)
            dtype, device = dtype or x.dtype, device or x.device
            parts = [fn((rows, *x.shape[1:]), generator=g, dtype=dtype, device=device) for g in gens]
            return torch.cat(parts)
        return draw

    def _multinomial(self, probs: torch.Tensor, num_samples: int, replacement: bool = False, **kwargs):
        gens, rows = self._split(probs.shape, "multinomial")
        original = self._originals["multinomial"]
        return torch.cat([original(probs[i * rows:(i + 1) * rows], num_samples, replacement, generator=g)
                          for i, g in enumerate(gens)])

    def _normal(self, *args, **kwargs):
        original = self._originals["normal"]
        if "size" not in kwargs or kwargs.get("generator") is not None:
            return original(*args, **kwargs)
        values = [original(*args, generator=self.generators[i], **kwargs) for i in self.active]
        return values[0]

    # -- context -----------------------------------------------------------------------------------
    def __enter__(self) -> "PerVideoDraws":
        self._originals = {n: getattr(torch, n) for n in PATCHED}
        torch.randn_like = self._like(torch.randn, "randn_like")
        torch.rand_like = self._like(torch.rand, "rand_like")
        torch.multinomial = self._multinomial
        torch.normal = self._normal
        return self

    def __exit__(self, *exc) -> None:
        for n, fn in self._originals.items():
            setattr(torch, n, fn)

    @contextlib.contextmanager
    def only(self, index: int) -> Iterator[None]:
        """Draws inside the block are video ``index``'s alone (a batch of one)."""
        before = self.active
        self.active = [before[index]]
        try:
            yield
        finally:
            self.active = before

    def one_by_one(self, fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """``fn(*tensors)`` applied to each video's slice (dim 0) with its own draws, concatenated."""
        def each(*tensors: torch.Tensor, **kwargs) -> torch.Tensor:
            n = len(self.active)
            outs = []
            for i in range(n):
                with self.only(i):
                    outs.append(fn(*(t[i:i + 1] if isinstance(t, torch.Tensor) else t for t in tensors), **kwargs))
            return torch.cat(outs)
        return each


@contextlib.contextmanager
def batch_of_one_semantics(draws: PerVideoDraws) -> Iterator[None]:
    """Per-video draws and a per-video mask drop: the batch behaves as separate batches of one."""
    from loci_fast.model import loci as step

    original = step.similarity_mask_drop
    step.similarity_mask_drop = draws.one_by_one(original)
    try:
        with draws:
            yield
    finally:
        step.similarity_mask_drop = original
