"""Non-finite gradients never reach the optimiser, on any rank, whichever rank saw them.

The guard wraps the ``step`` of the innermost optimiser (our Ranger or DeepSpeed's own): that is
where every precision and ZeRO stage arrives with the all-reduced (and, under ZeRO, partitioned)
fp32 gradients, after clipping. Each rank checks its gradients, the ranks agree with a MAX
all-reduce, and when any rank saw a NaN or an infinity no rank steps. The loop then counts the
step as skipped.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def _innermost_optimizer(engine) -> torch.optim.Optimizer:
    optimizer = getattr(engine, "basic_optimizer", None) or engine.optimizer
    while not isinstance(optimizer, torch.optim.Optimizer) and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


def optimizer_tensors(engine) -> list[torch.Tensor]:
    """The parameters and state tensors the innermost optimiser holds on this rank."""
    optimizer = _innermost_optimizer(engine)
    tensors = [p for group in optimizer.param_groups for p in group["params"]]
    for state in optimizer.state.values():
        tensors += [v for v in state.values() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    return tensors


def all_finite(tensors: list[torch.Tensor], device: torch.device) -> bool:
    """True when no rank's ``tensors`` hold a NaN or an infinity (collective: every rank calls)."""
    bad = torch.zeros((), dtype=torch.float32, device=device)
    if tensors:  # one host sync for all tensors, not one each
        finite = torch.stack([torch.isfinite(t).all().to(device) for t in tensors]).all()
        bad = (~finite).float()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    return bad.item() == 0


class GradientGuard:
    """Skips the optimiser step whenever any rank's gradients are not finite."""

    def __init__(self, engine) -> None:
        self.optimizer = _innermost_optimizer(engine)
        self.device = engine.device
        self.skipped = False  # whether the last step was skipped
        self._step = self.optimizer.step
        self.optimizer.step = self._guarded_step

    def _guarded_step(self, *args, **kwargs):
        grads = [p.grad for group in self.optimizer.param_groups for p in group["params"]
                 if p.grad is not None]
        self.skipped = not all_finite(grads, self.device)
        if self.skipped:
            return None
        return self._step(*args, **kwargs)

    def remove(self) -> None:
        self.optimizer.step = self._step
