"""The pipeline's threads and the bounded queues between them.

Every wait is bounded: a stage that waits `STALL` seconds for its neighbour treats the
pipeline as hung and the file fails instead of holding its worker for ever; a stage that does
not stop within `JOIN` seconds of being asked to is reported as stuck (in native code).
"""

from __future__ import annotations

import queue
import threading
import time

from sanitizer.errors import DecodeError

QUEUE = 6  # most frames in flight between two stages
QUEUE_BYTES = 32 << 20  # ... and about this many bytes of frames (big frames: shorter queues)
STALL = 300.0
JOIN = 5.0
END = object()  # end of stream marker


def queue_depth(width: int, height: int) -> int:
    """Frames a queue between two stages holds: QUEUE, fewer for big frames (2 at 4K and up),
    so the pipeline's memory stays bounded whatever the resolution."""
    frame_bytes = max(1, width * height * 3 // 2)  # yuv420p
    return max(2, min(QUEUE, QUEUE_BYTES // frame_bytes))


class Abort(Exception):
    """Another stage failed; unwind quietly (its exception is the one reported)."""


class Stage(threading.Thread):
    """A pipeline thread; its exception (if any) is kept for the calling thread."""

    def __init__(self, name: str, target, stop: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self._target_fn = target
        self.stop = stop
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._target_fn()
        except Abort:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
            self.error = exc
            self.stop.set()


class Hung(DecodeError):
    """The pipeline was stopped: a stage made no progress for `STALL` seconds, or the file
    went over its wall-clock limit (`timed_out`); `stuck` names stage threads that did not
    stop (still inside native code)."""

    stuck: list[str] = []  # noqa: RUF012 - replaced per instance, never mutated


def stalled(stuck: list[str] | None = None) -> Hung:
    exc = Hung(f"video pipeline made no progress for {STALL:g} s (decoder or encoder hung)")
    exc.stuck = stuck or []
    return exc


def timed_out(timeout_s: float, frames: int, stuck: list[str] | None = None) -> Hung:
    exc = Hung(
        f"over input.file_timeout_s ({timeout_s:g} s): stopped after {frames} frames; "
        "nothing published"
    )
    exc.stuck = stuck or []
    return exc


def put(q: queue.Queue, item, stop: threading.Event) -> None:
    deadline = time.monotonic() + STALL
    while True:
        if stop.is_set():
            raise Abort
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            if time.monotonic() > deadline:
                raise stalled() from None


def get(q: queue.Queue, stop: threading.Event):
    deadline = time.monotonic() + STALL
    while True:
        if stop.is_set():
            raise Abort
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            if time.monotonic() > deadline:
                raise stalled() from None


def join(stage: Stage, timeout: float) -> list[str]:
    """Join a stage thread; [its name] if it is still running after `timeout` (stuck)."""
    stage.join(timeout)
    return [stage.name] if stage.is_alive() else []
