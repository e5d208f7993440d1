"""Keep ``grad = None`` on parameters that no rank's loss reached, as plain PyTorch would.

DeepSpeed (ZeRO 0) gives every trainable parameter without a gradient a zero one before its
all-reduce, so that all ranks reduce equal buffers. Ranger, like upstream's optimiser, skips a
parameter whose gradient is None but steps one whose gradient is zero: weight decay, decaying
moments, an advancing RAdam step count and a Lookahead pull. Stage 2 is the case that matters: its
hypernetwork is reached only once the later refinement passes are weighted in (after about 2500
steps upstream), and until then upstream leaves it untouched.

Only for fp32 ZeRO 0 with the client optimiser: bf16 and ZeRO 1/2 step flat fp32 partitions, where a
single parameter cannot be skipped.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.distributed as dist


class UntouchedGradients:
    """Records which parameters received a gradient since the last optimiser step."""

    def __init__(self, params: Iterable[torch.nn.Parameter]) -> None:
        self.params = list(params)
        self.touched = torch.zeros(len(self.params))
        self.handles = [p.register_post_accumulate_grad_hook(self._marker(i))
                        for i, p in enumerate(self.params)]

    def _marker(self, index: int):
        def mark(_param: torch.Tensor) -> None:
            self.touched[index] = 1.0
        return mark

    def drop_untouched(self) -> int:
        """Before the optimiser step, after the all-reduce: ``grad = None`` where no rank's backward
        reached the parameter (a rank that did reach it makes the reduced gradient real for all).
        Returns how many parameters were dropped."""
        flags = self.touched.clone()
        if dist.is_available() and dist.is_initialized():
            if torch.cuda.is_available():  # NCCL reduces CUDA tensors only
                flags = flags.cuda()
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            flags = flags.cpu()
        dropped = 0
        for param, flag in zip(self.params, flags.tolist()):
            if not flag and param.grad is not None:
                param.grad = None
                dropped += 1
        self.touched.zero_()
        return dropped

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
