"""Strict structural checks that decoders forgive: truncated JPEG segments, PNG chunks.

Pillow and libjpeg "repair" some broken files silently (grey fill, ignored chunks); a
sanitizer must not publish an image it could not read as written, so these files fail.
"""

from __future__ import annotations

import struct
import zlib

from sanitizer.errors import DecodeError

_STANDALONE = {0x01, *range(0xD0, 0xD8)}


def check_jpeg(data: bytes) -> None:
    """Walk the JPEG marker segments from SOI to EOI; raise DecodeError on damage."""
    n = len(data)
    if data[:2] != b"\xff\xd8":
        raise DecodeError("not a JPEG stream (no start-of-image marker)")
    p = 2
    while p < n:
        if data[p] != 0xFF:
            raise DecodeError(
                f"corrupt JPEG: unexpected bytes at offset {p} (truncated or damaged segment)"
            )
        while p < n and data[p] == 0xFF:
            p += 1
        if p >= n:
            break
        marker = data[p]
        p += 1
        if marker == 0xD9:
            return
        if marker in _STANDALONE:
            continue
        if p + 2 > n:
            break
        length = int.from_bytes(data[p : p + 2], "big")
        if length < 2 or p + length > n:
            raise DecodeError(
                f"corrupt JPEG: segment 0xFF{marker:02X} runs past the end of the file"
            )
        p += length
        if marker == 0xDA:  # entropy-coded data up to the next real marker
            while True:
                q = data.find(b"\xff", p)
                if q < 0 or q + 1 >= n:
                    raise DecodeError(
                        "truncated JPEG: image data ends without an end-of-image marker"
                    )
                nxt = data[q + 1]
                if nxt == 0x00 or 0xD0 <= nxt <= 0xD7:
                    p = q + 2
                elif nxt == 0xFF:
                    p = q + 1
                else:
                    p = q
                    break
    raise DecodeError("truncated JPEG: no end-of-image marker")


def check_png(data: bytes) -> None:
    """Check PNG chunk lengths and CRCs, contiguous IDAT, one complete zlib stream, IEND."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise DecodeError("not a PNG stream")
    p, n = 8, len(data)
    idat_state = 0  # 0 before, 1 inside, 2 after the IDAT run
    inflater = zlib.decompressobj()
    ended = False
    while p + 8 <= n:
        (length,) = struct.unpack(">I", data[p : p + 4])
        ctype = data[p + 4 : p + 8]
        end = p + 12 + length
        if end > n:
            raise DecodeError(f"truncated PNG: chunk {ctype!r} runs past the end of the file")
        body = data[p + 8 : p + 8 + length]
        (crc,) = struct.unpack(">I", data[p + 8 + length : end])
        if zlib.crc32(ctype + body) != crc:
            raise DecodeError(f"corrupt PNG: bad checksum in chunk {ctype.decode('latin-1')!r}")
        if ctype == b"IDAT":
            if idat_state == 2:
                raise DecodeError("corrupt PNG: image data after the end of the image")
            idat_state = 1
            if ended and body:
                raise DecodeError("corrupt PNG: extra image data after the end of the image")
            try:
                inflater.decompress(body, 0)
                while inflater.unconsumed_tail:
                    inflater.decompress(inflater.unconsumed_tail, 1 << 20)
            except zlib.error as exc:
                raise DecodeError(f"corrupt PNG: bad image data ({exc})") from None
            if inflater.eof:
                if inflater.unused_data:
                    raise DecodeError("corrupt PNG: extra image data after the end of the image")
                ended = True
        elif idat_state == 1:
            idat_state = 2
        if ctype == b"IEND":
            if not ended and idat_state:
                raise DecodeError("truncated PNG: image data stream is incomplete")
            return
        p = end
    raise DecodeError("truncated PNG: no IEND chunk")


CHECKS = {"jpeg": check_jpeg, "png": check_png}


def check(fmt: str, data: bytes) -> None:
    fn = CHECKS.get(fmt)
    if fn is not None:
        fn(data)
