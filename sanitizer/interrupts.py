"""Ctrl-C: the one interrupt handler of the `sanitizer` command.

`install()` (the CLI does it first thing) replaces Python's SIGINT handler by one that records
the press and raises KeyboardInterrupt in the main thread, as Python's own does. The job
catches that KeyboardInterrupt once, in its run loop: it stops the run, lets the commit
protocol settle and writes the run row `interrupted`; the CLI exits 130. Because the press is
recorded, it is not lost where Python cannot raise it (a `__del__`, a gc or weakref callback,
or while the cluster starts, see `held`): the job raises it at its next step (`check`).

A library caller (`sanitizer.run`) keeps its own SIGINT handling; `check` then never raises.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

_pressed = threading.Event()
_holding = threading.Event()


def install() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_sigint)
        sys.unraisablehook = _unraisable


def pressed() -> bool:
    return _pressed.is_set()


def check() -> None:
    """Raise KeyboardInterrupt if Ctrl-C was pressed (and not raised where it landed)."""
    if _pressed.is_set():
        raise KeyboardInterrupt


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Hold Ctrl-C during the block (the embedded cluster's start, ~1 s) and honour it after.

    SIGINT is blocked in this thread, so the worker processes created meanwhile (and the
    cluster's threads) inherit it blocked: a Ctrl-C never reaches them, the driver stops them.
    A press during the block is delivered, or raised by `check`, when it ends."""
    blockable = hasattr(signal, "pthread_sigmask")  # POSIX
    if blockable:
        from multiprocessing import resource_tracker

        # started first: multiprocessing unblocks SIGINT in the thread that starts it
        resource_tracker.ensure_running()
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    _holding.set()
    try:
        yield
    finally:
        _holding.clear()
        if blockable:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)  # a pending press lands here
    check()


def _on_sigint(signum, frame) -> None:
    _pressed.set()
    if not _holding.is_set():
        raise KeyboardInterrupt


def _unraisable(unraisable) -> None:
    """A KeyboardInterrupt raised where it could not propagate is not printed: it is recorded
    and `check` raises it at the job's next step."""
    if isinstance(unraisable.exc_type, type) and issubclass(unraisable.exc_type, KeyboardInterrupt):
        return
    sys.__unraisablehook__(unraisable)
