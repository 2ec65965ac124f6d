"""The CenterFace graph's names and input format, shared by the runtime (centerface.py) and the
int8 derivation (quantize.py), so that neither imports the other's module for them."""

from __future__ import annotations

import numpy as np

INPUT = "input.1"
OUTPUTS = ["537", "538", "539", "540"]  # heatmap, scale, offset, landmarks


def to_blob(image: np.ndarray) -> np.ndarray:
    """The network's input for an HxWx3 uint8 RGB image: 1x3xHxW float32, zero-padded to /32."""
    h, w = image.shape[:2]
    blob = np.zeros((1, 3, -(-h // 32) * 32, -(-w // 32) * 32), np.float32)
    blob[0, :, :h, :w] = image.transpose(2, 0, 1)
    return blob
