"""The background image the playground composites over, and PNG encoding of the views."""
from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import torch


def load_background(path: str | Path, size: tuple[int, int]) -> tuple[torch.Tensor, bool]:
    """(3, H, W) RGB floats in [0, 1] of an image file at ``size`` (H, W), and whether it was resized.

    Upstream's GUI needs the image at the model's size already; here any other size is resized
    (bilinear), e.g. CATER's 320x240 ``background.jpg`` for a level-1 model.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--background {path}: no such image file (e.g. the dataset's background.jpg)")
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            resized = image.size != (size[1], size[0])
            if resized:
                image = image.resize((size[1], size[0]), Image.BILINEAR)
            array = np.asarray(image, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"--background {path}: not a readable image ({err}); pass a JPEG or PNG") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1), resized


def png_bytes(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG file bytes (fast compression: these are redrawn on every change)."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG", compress_level=1)
    return out.getvalue()


def png_data_url(image: np.ndarray) -> str:
    """(H, W, 3) uint8 -> a ``data:image/png;base64,...`` URL for an <img> src."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")
