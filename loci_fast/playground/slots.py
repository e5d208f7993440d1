"""One-slot decoders for the playground: the original Loci's and Loci-s's, each rendering the four views
(composite over the background, slot RGB, slot mask, position map) of one slot latent.

Compositing follows upstream's GUI (reference loci.md §5): one slot against the background, the slot
mask as a softmax over [slot logit, background logit]. For the original Loci the background logit is
the learned ``background.mask`` times 0.01 (upstream's one-slot correction) and colours are
σ(logit − 2.5) in BGR, flipped to RGB for display; for Loci-s it is the constant competitor 1 of its
compositing (loci-segmented.md §8.5) and colours are RGB in [0, 1].
"""
from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .latent import SlotLatent, check_vector

V1_BACKGROUND_SCALE = 0.01  # upstream's GUI scales the background logit for a single slot
V1_COLOUR_SHIFT = 2.5  # slot colour = sigmoid(logit - 2.5), as in the model's compositing
LOCI_S_COMPETITOR = 1.0  # Loci-s composites slots against a constant background logit of 1


@dataclass
class Views:
    """The four images of a decoded slot, each (H, W, 3) uint8 RGB."""

    composite: np.ndarray
    rgb: np.ndarray
    mask: np.ndarray
    position: np.ndarray

    def items(self):
        return (("composite", self.composite), ("rgb", self.rgb), ("mask", self.mask), ("position", self.position))


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) floats in [0, 1] -> (H, W, 3) uint8."""
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def tinted(gray: torch.Tensor) -> torch.Tensor:
    """(H, W) in [0, 1] -> (3, H, W) as upstream shows masks and position maps: (g, g, 0.6g + 0.4)."""
    return torch.stack((gray, gray, 0.6 * gray + 0.4))


def decoder_state(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The ``decoder.*`` weights of a model or pretrainer state dict, prefix removed."""
    out = {k[len("decoder."):]: v for k, v in state.items() if k.startswith("decoder.")}
    if not out:
        raise ValueError(f"{source} holds no decoder weights (keys decoder.*): pass the weights of a Loci, "
                         "Loci-s or object-pretraining run")
    return out


class SlotDecoder(ABC):
    """A model's decoder for one slot, kept loaded; ``render`` is thread-safe and runs without autograd.

    ``groups`` names the runs of toggleable gestalt bits (they come first in the gestalt vector; any
    values after them, e.g. Loci-s's z_scale, are kept as they are). ``axes`` gives the indices of the
    row, column and size entries of the position vector.
    """

    kind: str
    gestalt_size: int
    position_size: int
    groups: list[tuple[str, int]]
    axes: dict[str, int]
    size_range: tuple[float, float]  # where the decoder clips the size entry; the page stays inside it
    labels: dict[str, dict[int, str]] = {"gestalt": {}, "position": {}}  # names of the other entries

    def __init__(self, image_size: tuple[int, int], device: torch.device) -> None:
        self.image_size, self.device = image_size, device
        self.background = torch.full((3, *image_size), 0.5, device=device)  # grey until set_background
        self._lock = threading.Lock()

    def set_background(self, image: torch.Tensor) -> None:
        """Composite over ``image`` (3, H, W) RGB in [0, 1] at :attr:`image_size`."""
        if tuple(image.shape) != (3, *self.image_size):
            raise ValueError(f"background must be (3, {self.image_size[0]}, {self.image_size[1]}), "
                             f"got {tuple(image.shape)}")
        self.background = image.to(self.device, torch.float32)

    @abstractmethod
    def default_latent(self) -> SlotLatent:
        """The latent the page starts from when no ``--latent`` is given."""

    @abstractmethod
    def _views(self, gestalt: torch.Tensor, position: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(1, n), (1, k) -> composite, rgb (3, H, W) and mask, position map (H, W), all in [0, 1]."""

    def check(self, latent: SlotLatent, source: str = "request") -> SlotLatent:
        """The latent with its lengths and values checked (ValueError naming the problem)."""
        return SlotLatent(check_vector("gestalt", latent.gestalt, self.gestalt_size, source),
                          check_vector("position", latent.position, self.position_size, source))

    def describe(self) -> dict[str, Any]:
        """What the page needs to lay out its controls."""
        return {"kind": self.kind, "image_size": list(self.image_size), "gestalt_size": self.gestalt_size,
                "position_size": self.position_size, "groups": [list(g) for g in self.groups], "axes": self.axes,
                "size_range": list(self.size_range),
                "labels": {k: {str(i): n for i, n in v.items()} for k, v in self.labels.items()}}

    def render(self, latent: SlotLatent) -> Views:
        """Decode ``latent`` and return its four views."""
        latent = self.check(latent)
        gestalt = torch.tensor([latent.gestalt], dtype=torch.float32, device=self.device)
        position = torch.tensor([latent.position], dtype=torch.float32, device=self.device)
        with self._lock, torch.no_grad():
            composite, rgb, mask, where = self._views(gestalt, position)
            return Views(to_uint8(composite), to_uint8(rgb), to_uint8(tinted(mask)), to_uint8(tinted(where)))


class LociV1Slot(SlotDecoder):
    """The original Loci's decoder at level 2 (the input size); position (row, col, size), G gestalt bits."""

    kind = "loci-v1"
    position_size = 3
    axes = {"row": 0, "col": 1, "size": 2}
    size_range = (0.0, 1.0)

    def __init__(self, model_cfg: Any, state: dict[str, torch.Tensor], device: torch.device,
                 source: str = "checkpoint") -> None:
        from loci_fast.loci_v1.decoder import LociV1Decoder

        m, dec = model_cfg, model_cfg["decoder"]
        h, w = (int(v) for v in m["input_size"])
        super().__init__((h, w), device)
        self.gestalt_size = int(m["gestalt_size"])
        self.groups = [("gestalt", self.gestalt_size)]
        # Level 2 whatever the config's level, as upstream's GUI: a level-1 run's level-2 branches are
        # gated by ~1e-16, so this shows its level-1 output upsampled, at the background's size.
        self.decoder = LociV1Decoder(tuple(m["latent_size"]), 1, self.gestalt_size, int(dec["channels"]),
                                     int(dec["level1_channels"]), int(dec["num_layers"]), level=2)
        load_strict(self.decoder, decoder_state(state, source), source)
        self.decoder.to(device).eval()
        bg = state.get("background.mask")
        if bg is None:
            bg = torch.ones(1, 1, h, w)  # the untrained initial logit
        self.bg_logit = bg.to(device, torch.float32)[0, 0]

    def default_latent(self) -> SlotLatent:
        return SlotLatent([0.0] * self.gestalt_size, [0.0, 0.0, 0.05])  # upstream's GUI default

    def _views(self, gestalt, position):
        from loci_fast.loci_v1.geometry import gaussian_maps

        mask_logit, rgb_logit = self.decoder(position, gestalt)
        mask = torch.sigmoid(mask_logit[0, 0] - V1_BACKGROUND_SCALE * self.bg_logit)  # 2-way softmax
        rgb = torch.sigmoid(rgb_logit[0] - V1_COLOUR_SHIFT).flip(0)  # BGR -> RGB
        composite = mask * rgb + (1 - mask) * self.background
        return composite, rgb, mask, gaussian_maps(position, self.image_size)[0, 0]


class LociSSlot(SlotDecoder):
    """Loci-s's decoder; position (x, y, z, std), gestalt [mask G, depth G, rgb G bits, z_scale]."""

    kind = "loci-s"
    position_size = 4
    axes = {"row": 1, "col": 0, "size": 3}

    def __init__(self, model_cfg: Any, state: dict[str, torch.Tensor], device: torch.device,
                 source: str = "checkpoint") -> None:
        from loci_fast.model.decoder import LociDecoder

        self.decoder = LociDecoder.from_config(model_cfg, num_slots=1)
        lh, lw = self.decoder.latent_size
        super().__init__((lh * 16, lw * 16), device)
        g = self.decoder.gestalt_size
        self.gestalt_size = 3 * g + 1
        self.groups = [("mask", g), ("depth", g), ("rgb", g)]
        self.labels = {"gestalt": {3 * g: "z_scale"}, "position": {2: "depth z"}}
        self.size_range = (1.0 / min(lh, lw), 0.5)  # the decoder's std clip at the latent grid
        load_strict(self.decoder, decoder_state(state, source), source)
        self.decoder.to(device).eval()

    def default_latent(self) -> SlotLatent:
        std = min(max(0.1, 1.5 * self.size_range[0]), self.size_range[1])  # visibly above the clip
        return SlotLatent([0.0] * (self.gestalt_size - 1) + [0.5], [0.0, 0.0, 0.0, std])

    def _views(self, gestalt, position):
        from loci_fast import kernels as K

        mask_logit, rgb = self.decoder(position, gestalt)[:2]
        mask = torch.sigmoid(mask_logit[0, 0] - LOCI_S_COMPETITOR)  # softmax against the competitor
        composite = mask * rgb[0] + (1 - mask) * self.background
        where = K.gaussian_maps(position, self.image_size, min_std=self.size_range[0])
        return composite, rgb[0], mask, where[0, 0]


def load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict(strict) with an error that says which config to pass."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise ValueError(f"{source}: its decoder weights do not fit the config's decoder ({first} ...); pass "
                         "the --config the weights were trained with") from None


def build_slot(cfg: Any, state: dict[str, torch.Tensor], device: torch.device,
               source: str = "checkpoint") -> SlotDecoder:
    """The slot decoder for a loaded config: original Loci for a loci-v1 config, else Loci-s."""
    from loci_fast.config.schema_v1 import is_loci_v1

    data = cfg.to_dict() if hasattr(cfg, "to_dict") else cfg
    cls = LociV1Slot if is_loci_v1(data) else LociSSlot
    return cls(cfg["model"], state, device, source)
