"""Image reconstruction losses of the object pretraining (reference §16.1-16.2).

Every loss is a per-sample masked mean, ``sum(term * mask) / (sum(mask) + 1e-7)``, averaged over the
batch. Each returns a triple ``(loss, part_a, part_b)`` whose parts are logged by the trainer.

Results take the dtype of the output image. For fp16/bf16 images the losses compute in fp32 and cast
back: SSIM's variances are differences of nearly equal squares (E[x²] - E[x]² at x ~ 0.5 loses the
whole variance of a smooth patch in bf16), and the masked means sum over every pixel.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..color import RGB2YCbCr
from ..precision import upcast

SSIM_C1 = 0.01 ** 2
SSIM_C2 = 0.03 ** 2


def _box3(x: torch.Tensor) -> torch.Tensor:
    """3x3 mean with stride 1 and no padding, as two shifted 1-D sums.

    Same values as ``F.avg_pool2d(x, 3, 1)`` up to rounding, but about 4x faster forward and
    backward on the CPU, where avg_pool2d was a quarter of a 128x128 stage-1 step.
    """
    s = x[..., :-2] + x[..., 1:-1] + x[..., 2:]
    return (s[..., :-2, :] + s[..., 1:-1, :] + s[..., 2:, :]) / 9


def ssim_dissimilarity(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-pixel structural dissimilarity ``clamp((1 - SSIM) / 2, 0, 1)`` with 3x3 windows.

    Inputs (B, C, H, W) are reflection-padded by one pixel, so the output has the input's shape and
    the dtype of ``x`` (computed in fp32 for fp16/bf16 inputs).
    """
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"ssim_dissimilarity: expected two (B, C, H, W) tensors of the same shape, "
                         f"received {tuple(x.shape)} and {tuple(y.shape)}")
    dtype, x, y = x.dtype, upcast(x), upcast(y)
    c = x.shape[1]
    # One pooling call over the five statistics' inputs instead of five calls.
    stats = torch.cat((x, y, x * x, y * y, x * y), dim=1)
    stats = _box3(F.pad(stats, (1, 1, 1, 1), mode="reflect"))
    mu_x, mu_y, xx, yy, xy = stats.split(c, dim=1)
    sigma_x = xx - mu_x ** 2
    sigma_y = yy - mu_y ** 2
    sigma_xy = xy - mu_x * mu_y
    num = (2 * mu_x * mu_y + SSIM_C1) * (2 * sigma_xy + SSIM_C2)
    den = (mu_x ** 2 + mu_y ** 2 + SSIM_C1) * (sigma_x + sigma_y + SSIM_C2)
    return torch.clamp((1 - num / den) / 2, 0, 1).to(dtype)


class SSIM(nn.Module):
    """Module form of :func:`ssim_dissimilarity`."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ssim_dissimilarity(x, y)


def _check(name: str, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> None:
    if output.dim() != 4 or output.shape != target.shape:
        raise ValueError(f"{name}: output and target must be (B, C, H, W) of the same shape, "
                         f"received {tuple(output.shape)} and {tuple(target.shape)}")
    b, _, h, w = output.shape
    if mask.dim() != 4 or tuple(mask.shape[i] for i in (0, 2, 3)) != (b, h, w) or mask.shape[1] != 1:
        raise ValueError(f"{name}: mask must be ({b}, 1, {h}, {w}) to weight output {tuple(output.shape)}, "
                         f"received {tuple(mask.shape)}")


def _masked_mean(term: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample ``sum(term * mask) / (sum(mask) + 1e-7)`` -> (B,)."""
    return (term * mask).sum(dim=(1, 2, 3)) / (mask.sum(dim=(1, 2, 3)) + 1e-7)


class MaskedL1SSIMLoss(nn.Module):
    """``(1 - f) * masked L1 + f * masked SSIM dissimilarity``; returns (loss, mean L1, mean SSIM).

    The depth loss of every stage (f = 0.85); also the RGB loss when ``rgb_loss == "l1ssim"``.
    """

    def __init__(self, ssim_factor: float = 0.85) -> None:
        super().__init__()
        self.ssim_factor = ssim_factor

    def forward(self, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        _check("MaskedL1SSIMLoss", output, target, mask)
        dtype, output, target, mask = output.dtype, upcast(output), upcast(target), upcast(mask)
        # sum over channels happens inside the masked mean, as upstream sums over (C, H, W)
        l1 = _masked_mean(torch.abs(output - target), mask)
        ssim = _masked_mean(ssim_dissimilarity(output, target), mask)
        f = self.ssim_factor
        return (torch.mean(l1 * (1 - f) + ssim * f).to(dtype), torch.mean(l1).to(dtype),
                torch.mean(ssim).to(dtype))


class MaskedYCbCrL2SSIMLoss(nn.Module):
    """RGB loss in YCbCr: SSIM dissimilarity on Y plus 10 x squared error on Cb and Cr, masked means.

    The target is converted without gradient. Returns (Y + Cb + Cr, Cb + Cr, Y), batch means.
    """

    def __init__(self) -> None:
        super().__init__()
        self.to_ycbcr = RGB2YCbCr()

    def forward(self, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        _check("MaskedYCbCrL2SSIMLoss", output, target, mask)
        dtype, output, target, mask = output.dtype, upcast(output), upcast(target), upcast(mask)
        x = self.to_ycbcr(output)
        with torch.no_grad():
            y = self.to_ycbcr(target.detach())
        y_loss = _masked_mean(ssim_dissimilarity(x[:, 0:1], y[:, 0:1]), mask)
        cb_loss = _masked_mean((x[:, 1:2] - y[:, 1:2]) ** 2 * 10, mask)
        cr_loss = _masked_mean((x[:, 2:3] - y[:, 2:3]) ** 2 * 10, mask)
        return (torch.mean(y_loss + cb_loss + cr_loss).to(dtype), torch.mean(cb_loss + cr_loss).to(dtype),
                torch.mean(y_loss).to(dtype))
