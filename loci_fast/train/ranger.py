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
        """One RAdam step for every parameter with a gradient; every k-th call a Lookahead sync."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Ranger does not support sparse gradients")
                grad = p.grad.float()
                state = self.state[p]
                if "step" not in state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
                state["step"] += 1
                step_size = self.rectified_step_size(state["step"], beta1, beta2)
                if step_size is None:
                    continue  # upstream skips the update (degenerated_to_sgd=False)
                p32 = p.float()
                if group["weight_decay"] != 0:
                    p32.mul_(1.0 - group["weight_decay"] * group["lr"])
                denom = exp_avg_sq.sqrt().add_(group["eps"])
                p32.addcdiv_(exp_avg, denom, value=-step_size * group["lr"])
                p.copy_(p32)
            group["lookahead_step"] += 1
            if group["lookahead_step"] % group["lookahead_k"] == 0:
                self._sync_slow(group)
        return loss

    @torch.no_grad()
    def _sync_slow(self, group: dict) -> None:
        alpha = group["lookahead_alpha"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if "slow_buffer" not in state:
                state["slow_buffer"] = p.detach().clone()
            slow = state["slow_buffer"]
            slow.add_(p - slow, alpha=alpha)
            p.copy_(slow)
