"""Frame geometry: display rotation, and boxes between the stored and the upright frame.

Detection and tracking work in the *upright* frame (np.rot90(stored, turns)), as the audit
records boxes; redaction paints the *stored* frame's planes.
"""

from __future__ import annotations

import numpy as np


def rotation_turns(rotation: float) -> int:
    """Counter-clockwise quarter turns that make a frame upright, from `frame.rotation`."""
    return int(round(float(rotation) / 90.0)) % 4


def upright_to_stored(boxes: np.ndarray, turns: int, width: int, height: int) -> np.ndarray:
    """Map x1,y1,x2,y2 boxes from the upright frame (np.rot90(stored, turns)) back to the
    stored frame of `width` x `height`."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    if turns == 0:
        out = b.copy()
    elif turns == 1:
        out = np.stack([width - y2, x1, width - y1, x2], 1)
    elif turns == 2:
        out = np.stack([width - x2, height - y2, width - x1, height - y1], 1)
    else:
        out = np.stack([y1, height - x2, y2, height - x1], 1)
    return out.astype(np.float32)


def stored_to_upright(boxes: np.ndarray, turns: int, width: int, height: int) -> np.ndarray:
    """The inverse of `upright_to_stored`: boxes of the stored `width` x `height` frame in
    the upright frame np.rot90(stored, turns)."""
    up_w, up_h = (height, width) if turns % 2 else (width, height)
    return upright_to_stored(boxes, (4 - turns) % 4, up_w, up_h)
