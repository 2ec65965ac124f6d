"""Encoder region marking: tell x264 that redacted regions need few bits."""

from __future__ import annotations

from fractions import Fraction

import av


class RegionMarker:
    """Marks a frame's redacted regions for the encoder (FFmpeg's regions-of-interest side data,
    attached by the `addroi` filter; the frame's pixels are not copied): libx264 raises the
    quantizer there by `qoffset` x its QP range. A blurred face needs few bits, and x264 spent
    ~20 % more time on a crowd's blurred faces than on the original ones (BENCHMARKS.md)."""

    def __init__(self, qoffset: float) -> None:
        self.qoffset = Fraction(qoffset).limit_denominator(100)
        self._graph = None
        self._key: tuple = ()

    def __call__(
        self, frame: av.VideoFrame, regions: list[tuple[int, int, int, int]]
    ) -> av.VideoFrame:
        if not regions or not self.qoffset:
            return frame
        try:
            return self._mark(frame, regions)
        except (av.error.FFmpegError, ValueError):
            self.qoffset = Fraction(0)  # an FFmpeg without the filter: encode as is from now on
            return frame

    def _mark(
        self, frame: av.VideoFrame, regions: list[tuple[int, int, int, int]]
    ) -> av.VideoFrame:
        key = tuple(regions)  # a file's frames keep one size and format (a change fails the file)
        if key != self._key:  # steady masks keep the same regions for frames on end
            self._graph, self._key = self._build(frame, regions), key
        self._graph.push(frame)
        return self._graph.pull()

    def _build(self, frame: av.VideoFrame, regions: list[tuple[int, int, int, int]]):
        import av.filter

        graph = av.filter.Graph()
        last = graph.add_buffer(
            width=frame.width,
            height=frame.height,
            format=frame.format.name,
            time_base=frame.time_base or Fraction(1, 25),
        )
        q = f"{self.qoffset.numerator}/{self.qoffset.denominator}"
        for x1, y1, x2, y2 in regions:
            roi = graph.add("addroi", f"x={x1}:y={y1}:w={x2 - x1}:h={y2 - y1}:qoffset={q}")
            last.link_to(roi)
            last = roi
        sink = graph.add("buffersink")
        last.link_to(sink)
        graph.configure()
        return graph
