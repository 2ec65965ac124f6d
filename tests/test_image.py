"""Image decode/encode: orientation, modes, metadata stripping, strict failure on damage."""

import io

import numpy as np
import pytest
from PIL import Image

from sanitizer.errors import DecodeError
from sanitizer.media import image, validate
from sanitizer.records import Detections
from sanitizer.redact import RedactParams


class FixedDetector:
    """Returns the same box for every image: isolates decode/redact/encode from the model."""

    name = "fixed"
    model_sha256 = ""

    def __init__(self, box=(10, 10, 40, 40)):
        self.box = box
        self.seen = []

    def detect(self, img):
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        self.seen.append(img.shape)
        return Detections([self.box], [0.9])


def save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def gradient(w=64, h=48) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 4 % 256, y * 5 % 256, (x + y) % 256], 2).astype(np.uint8)


def exif_with_gps(orientation: int | None = None) -> Image.Exif:
    ex = Image.Exif()
    ex[0x010F] = "Maker"
    ex[0x0110] = "Phone 1"
    ex[0x8825] = {1: "N", 2: (1.0, 2.0, 3.0)}
    if orientation:
        ex[0x0112] = orientation
    return ex


@pytest.mark.parametrize(
    "orientation, transform",
    [
        (1, lambda a: a),
        (3, lambda a: np.rot90(a, 2)),
        (6, lambda a: np.rot90(a, 1)),
        (8, lambda a: np.rot90(a, -1)),
        (2, lambda a: a[:, ::-1]),
    ],
)
def test_exif_orientation_applied(orientation, transform):
    upright = gradient()
    stored = np.ascontiguousarray(transform(upright))
    data = save(Image.fromarray(stored), "PNG", exif=exif_with_gps(orientation))
    dec = image.decode(data)
    assert dec.frames[0].shape == upright.shape
    assert np.abs(dec.frames[0].astype(int) - upright).max() == 0


@pytest.mark.parametrize(
    "fmt, mode",
    [
        ("JPEG", "RGB"),
        ("PNG", "RGBA"),
        ("WEBP", "RGB"),
        ("TIFF", "RGB"),
        ("PNG", "L"),
        ("JPEG", "L"),
        ("BMP", "RGB"),
    ],
)
def test_output_same_format_no_metadata(fmt, mode):
    im = Image.fromarray(gradient()).convert(mode)
    kw = {"exif": exif_with_gps(1)} if fmt in ("JPEG", "PNG", "WEBP") else {}
    if fmt == "TIFF":
        kw["tiffinfo"] = {271: "Maker", 272: "Phone 1", 315: "Someone"}
    if fmt == "JPEG":
        kw["comment"] = b"shot at home"
    out = image.sanitize(save(im, fmt, **kw), FixedDetector(), RedactParams(method="solid"))
    back = Image.open(io.BytesIO(out.payload))
    assert back.format == fmt
    assert back.mode == mode or (fmt == "BMP")
    assert not set(back.getexif()) & {0x010F, 0x0110, 0x8825, 0x8769, 0x013B}
    assert "comment" not in back.info and "exif" not in back.info
    arr = np.asarray(back.convert("RGB"))
    assert arr[25, 25].max() <= 30, "the face box must be filled"


def test_rgba_alpha_and_16bit_kept():
    rgba = np.dstack([gradient(), np.full((48, 64), 77, np.uint8)])
    out = image.sanitize(save(Image.fromarray(rgba), "PNG"), FixedDetector(), RedactParams())
    back = np.asarray(Image.open(io.BytesIO(out.payload)))
    assert back.shape == (48, 64, 4) and (back[..., 3] == 77).all()

    deep = (np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20).astype(np.uint16)
    out = image.sanitize(
        save(Image.fromarray(deep), "PNG"), FixedDetector(), RedactParams(method="solid")
    )
    back = Image.open(io.BytesIO(out.payload))
    assert back.mode.startswith("I")
    arr = np.asarray(back)
    assert arr[25, 25] == 0 and arr.max() > 255


def test_cmyk_jpeg_becomes_rgb():
    im = Image.fromarray(gradient()).convert("CMYK")
    det = FixedDetector()
    out = image.sanitize(save(im, "JPEG"), det, RedactParams(method="solid"))
    assert Image.open(io.BytesIO(out.payload)).mode == "RGB"
    assert det.seen == [(48, 64, 3)]


def test_animated_gif_every_frame_redacted():
    frames = [Image.fromarray(np.roll(gradient(), i * 5, 1)) for i in range(4)]
    data = save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)
    det = FixedDetector()
    out = image.sanitize(data, det, RedactParams(method="solid"))
    assert len(det.seen) == 4 and len(out.detections) == 4
    back = Image.open(io.BytesIO(out.payload))
    assert back.n_frames == 4
    for i in range(4):
        back.seek(i)
        assert np.asarray(back.convert("RGB"))[25, 25].max() <= 30


def test_truncated_and_corrupt_fail_closed():
    good = save(Image.fromarray(gradient(256, 256)), "JPEG")
    with pytest.raises(DecodeError, match="JPEG"):
        image.decode(good[: len(good) // 2])
    png = save(Image.fromarray(gradient()), "PNG")
    with pytest.raises(DecodeError, match="PNG"):
        image.decode(png[:-20])
    bad_crc = bytearray(png)
    bad_crc[40] ^= 0xFF
    with pytest.raises(DecodeError):
        image.decode(bytes(bad_crc))
    with pytest.raises(DecodeError):
        image.decode(b"\xff\xd8\xff\xe0 not really a jpeg")


def test_validate_accepts_valid_streams():
    validate.check("jpeg", save(Image.fromarray(gradient()), "JPEG", progressive=True))
    validate.check("png", save(Image.fromarray(gradient()), "PNG"))
