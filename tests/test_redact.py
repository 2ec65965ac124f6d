import numpy as np
import pytest

from sanitizer.redact import (
    METHODS,
    RedactParams,
    covering,
    expand_boxes,
    mask_for,
    redact,
    redact_inplace,
)

RNG = np.random.default_rng(1234)
BOX = np.array([[60.0, 40.0, 140.0, 150.0]])


def noisy(h=200, w=240, c=3, dtype=np.uint8):
    hi = 255 if dtype == np.uint8 else 65535
    shape = (h, w) if c == 1 else (h, w, c)
    return RNG.integers(0, hi, shape, dtype=dtype)


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("shape", ["ellipse", "box"])
def test_only_mask_changes_and_input_untouched(method, shape):
    img = noisy()
    before = img.copy()
    out = redact(img, BOX, RedactParams(method=method, shape=shape, margin=1.3))
    assert np.array_equal(img, before), "redact must not mutate its input"
    mask = mask_for(BOX, *img.shape[:2], shape=shape, margin=1.3)
    assert np.array_equal(out[~mask], img[~mask]), "no pixel outside the mask may change"
    inside = out[mask].astype(float)
    assert inside.std() < 0.35 * img[mask].astype(float).std(), "face detail must be destroyed"


@pytest.mark.parametrize(
    "channels, dtype",
    [(1, np.uint8), (2, np.uint8), (3, np.uint8), (4, np.uint8), (1, np.uint16)],
)
def test_modes_and_alpha_kept(channels, dtype):
    img = noisy(c=channels, dtype=dtype)
    out = redact(img, BOX, RedactParams(method="gaussian"))
    assert out.dtype == img.dtype and out.shape == img.shape
    if channels in (2, 4):
        assert np.array_equal(out[..., -1], img[..., -1]), "alpha must be kept"
    mask = mask_for(BOX, *img.shape[:2])
    color = out[..., : channels - 1] if channels in (2, 4) else out
    assert (
        color[mask] != (img[..., : channels - 1] if channels in (2, 4) else img)[mask]
    ).mean() > 0.9


def test_pixelate_at_most_blocks_across_face():
    img = noisy(400, 400)
    box = np.array([[100.0, 100.0, 300.0, 300.0]])  # 200 px face
    out = redact(img, box, RedactParams(method="pixelate", shape="box", margin=1.0, blocks=8))
    row = out[200, 100:300, 0]
    distinct_runs = 1 + int(np.count_nonzero(np.diff(row.astype(int))))
    assert distinct_runs <= 9  # 8 blocks, +1 for a partial block at an edge


def test_solid_fills_colour():
    img = noisy()
    out = redact(img, BOX, RedactParams(method="solid", color=(10, 20, 30)))
    mask = mask_for(BOX, *img.shape[:2])
    assert (out[mask] == [10, 20, 30]).all()


def test_boxes_clipped_at_border_and_empty_ok():
    img = noisy(100, 100)
    out = redact(img, np.array([[-50.0, -50.0, 30.0, 30.0]]), RedactParams())
    assert out.shape == img.shape
    assert np.array_equal(redact(img, np.zeros((0, 4)), RedactParams()), img)
    e = expand_boxes(np.array([[90.0, 90.0, 120.0, 120.0]]), 1.3, 100, 100)
    assert e[0, 2] == 100 and e[0, 3] == 100


def test_config_names_every_method_and_shape():
    from sanitizer.config import REDACT_METHODS, REDACT_SHAPES
    from sanitizer.redact import SHAPES

    assert tuple(METHODS) == REDACT_METHODS and SHAPES == REDACT_SHAPES


def test_unknown_method_is_clear():
    with pytest.raises(ValueError, match="unknown redaction method 'blur'.*gaussian"):
        redact(noisy(), BOX, RedactParams(method="blur"))


@pytest.mark.parametrize("method", list(METHODS))
def test_grid_aligned_regions_only_grow_and_sit_on_the_grid(method):
    """Video frames: a region widened outward to the 16-px macroblock grid covers at least
    what the plain region covers, and nothing outside the widened region changes."""
    img = noisy(200, 240)
    box = np.array([[61.0, 43.0, 133.0, 141.0]])
    p = RedactParams(method=method, shape="box", margin=1.3)
    plain, snapped = img.copy(), img.copy()
    redact_inplace(plain, box, p)
    redact_inplace(snapped, box, p, grid=16)
    x1, y1, x2, y2 = expand_boxes(box, 1.3, 240, 200)[0]
    gx1, gy1, gx2, gy2 = x1 // 16 * 16, y1 // 16 * 16, -(-x2 // 16) * 16, -(-y2 // 16) * 16
    changed = (snapped != img).any(axis=2)
    outside = np.ones_like(changed)
    outside[gy1:gy2, gx1:gx2] = False
    assert not changed[outside].any()
    inner = (snapped[y1:y2, x1:x2].astype(float) - img[y1:y2, x1:x2]).std(axis=(0, 1))
    assert (snapped[y1:y2, x1:x2] != img[y1:y2, x1:x2]).any(axis=2).mean() > 0.9
    assert inner.min() > 0  # the whole plain region is redacted, not just its snapped edge
    # a box that moves by a few pixels keeps the same region: nothing shimmers at its edges
    moved = img.copy()
    redact_inplace(moved, box - 1.0, p, grid=16)
    assert np.array_equal((moved != img).any(axis=2), changed)


def test_covering_leaves_out_boxes_whose_region_a_stronger_mask_already_covers():
    p = RedactParams(method="gaussian", shape="box", margin=1.0)
    big = [0.0, 0.0, 64.0, 64.0]
    boxes = np.array(
        [
            [4.0, 4.0, 30.0, 30.0],  # inside `big`, smaller face: covered
            big,
            big,  # the same region again: the first one stays
            [100.0, 100.0, 130.0, 130.0],  # apart: stays
            [60.0, 60.0, 120.0, 120.0],  # overlaps `big` without being inside it: stays
        ],
        np.float32,
    )
    kept = covering(boxes, p, 320, 240, grid=16)
    assert kept.tolist() == boxes[[1, 3, 4]].tolist()
    # a box clipped at the frame's edge whose face is bigger than its container's keeps its
    # own (stronger) mask even though its clipped region lies inside the container's
    edge = np.array([[0.0, 0.0, 48.0, 48.0], [-200.0, -200.0, 20.0, 20.0]], np.float32)
    assert len(covering(edge, p, 320, 240, grid=16)) == 2
    # ellipses inside a box region are not inside its ellipse: every box is kept
    assert len(covering(boxes, RedactParams(shape="ellipse", margin=1.0), 320, 240, 16)) == 5


@pytest.mark.parametrize("method", list(METHODS))
def test_covered_boxes_change_nothing_a_solid_fill_shows(method):
    """Painting only the covering boxes paints the same pixels; a solid fill gives the very
    same image, and the other methods still change every pixel of every region."""
    rng = np.random.default_rng(7)
    xy = rng.uniform(0, 200, (60, 2))
    boxes = np.hstack([xy, xy + rng.uniform(8, 40, (60, 2))]).astype(np.float32)
    p = RedactParams(method=method, shape="box", margin=1.5)
    img = noisy(h=256, w=256, c=1)
    every, only = img.copy(), img.copy()
    regions = redact_inplace(every, boxes, p, grid=16)
    kept = covering(boxes, p, 256, 256, grid=16)
    assert len(kept) < len(boxes)
    kept_regions = redact_inplace(only, kept, p, grid=16)
    union = np.zeros(img.shape, bool)
    for x1, y1, x2, y2 in regions:
        union[y1:y2, x1:x2] = True
    kept_union = np.zeros(img.shape, bool)
    for x1, y1, x2, y2 in kept_regions:
        kept_union[y1:y2, x1:x2] = True
    assert np.array_equal(union, kept_union)
    assert np.array_equal(only[~union], img[~union])
    if method == "solid":
        assert np.array_equal(only, every)
