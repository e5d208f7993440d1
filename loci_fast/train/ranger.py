"""Ranger: Lookahead over RAdam, the optimiser of every upstream stage (reference §17.1).

One ``torch.optim.Optimizer`` holds both parts, so its ``state_dict`` carries the RAdam moments and
the Lookahead slow weights together and DeepSpeed can checkpoint it like any client optimiser.

Upstream behaviour kept on purpose (it changes the numbers):
* eps = 1e-16 and no SGD fallback: while the variance rectification term N_sma < 5 (the first
  few steps) a parameter is not updated at all, weight decay included;
* weight decay is decoupled, ``p *= 1 - lr * wd``, applied only when the update happens;
* the slow buffer is created lazily at the first synchronisation (step k), from the fast weights
  of that moment, and only for parameters that have a gradient then;
* the update math runs in fp32 whatever the parameter dtype.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch


class Ranger(torch.optim.Optimizer):
    """Lookahead(alpha, k) wrapped around RAdam(lr, betas, eps, weight_decay)."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-16,
        weight_decay: float = 0.0,
        alpha: float = 0.5,
        k: int = 6,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"Ranger: lr must be >= 0, got {lr}")
        if eps < 0.0:
            raise ValueError(f"Ranger: eps must be >= 0, got {eps}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"Ranger: betas must lie in [0, 1), got {betas}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"Ranger: alpha must lie in [0, 1], got {alpha}")
        if k < 1:
            raise ValueError(f"Ranger: k must be >= 1, got {k}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        lookahead_alpha=alpha, lookahead_k=k, lookahead_step=0)
        super().__init__(params, defaults)

    @staticmethod
    def rectified_step_size(step: int, beta1: float, beta2: float) -> float | None:
        """RAdam's step size at ``step`` (1-based), or None while the variance is not tractable."""
        beta2_t = beta2 ** step
        n_sma_max = 2.0 / (1.0 - beta2) - 1.0
        n_sma = n_sma_max - 2.0 * step * beta2_t / (1.0 - beta2_t)
        if n_sma < 5.0:
            return None
        ratio = ((1.0 - beta2_t) * (n_sma - 4.0) / (n_sma_max - 4.0) * (n_sma - 2.0) / n_sma
                 * n_sma_max / (n_sma_max - 2.0))
        return math.sqrt(ratio) / (1.0 - beta1 ** step)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):  # type: ignore[override]
        """One RAdam step for every parameter with a gradient; every k-th call a Lookahead sync.

        Parameters sharing (step count, device, dtype) are updated by ``torch._foreach_*`` calls,
        one call per operation instead of one per tensor: the same arithmetic in the same order as
        a per-parameter loop, without its Python and kernel-launch cost for hundreds of tensors.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            buckets: dict[tuple, list[torch.Tensor]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Ranger does not support sparse gradients")
                state = self.state[p]
                if "step" not in state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
                buckets.setdefault((state["step"], p.device, p.dtype), []).append(p)
            for (step, _, dtype), params in buckets.items():
                self._radam(group, step, params, fp32=dtype == torch.float32)
            group["lookahead_step"] += 1
            if group["lookahead_step"] % group["lookahead_k"] == 0:
                self._sync_slow(group)
        return loss

    def _radam(self, group: dict, step: int, params: list[torch.Tensor], fp32: bool) -> None:
        beta1, beta2 = group["betas"]
        grads = [p.grad.float() for p in params]
        exp_avg = [self.state[p]["exp_avg"] for p in params]
        exp_avg_sq = [self.state[p]["exp_avg_sq"] for p in params]
        torch._foreach_mul_(exp_avg_sq, beta2)
        torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1.0 - beta2)
        torch._foreach_mul_(exp_avg, beta1)
        torch._foreach_add_(exp_avg, grads, alpha=1.0 - beta1)
        step_size = self.rectified_step_size(step, beta1, beta2)
        if step_size is None:
            return  # upstream skips the update (degenerated_to_sgd=False)
        p32 = params if fp32 else [p.float() for p in params]
        if group["weight_decay"] != 0:
            torch._foreach_mul_(p32, 1.0 - group["weight_decay"] * group["lr"])
        denom = torch._foreach_sqrt(exp_avg_sq)
        torch._foreach_add_(denom, group["eps"])
        torch._foreach_addcdiv_(p32, exp_avg, denom, value=-step_size * group["lr"])
        if not fp32:
            torch._foreach_copy_(params, p32)

    @torch.no_grad()
    def _sync_slow(self, group: dict) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        for p in params:
            if "slow_buffer" not in self.state[p]:
                self.state[p]["slow_buffer"] = p.detach().clone()
        if not params:
            return
        slow = [self.state[p]["slow_buffer"] for p in params]
        torch._foreach_add_(slow, torch._foreach_sub(params, slow), alpha=group["lookahead_alpha"])
        torch._foreach_copy_(params, slow)
