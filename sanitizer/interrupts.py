"""Ctrl-C that is never lost.

CPython turns SIGINT into a KeyboardInterrupt at the next bytecode of the main thread. When
that bytecode belongs to a callback whose exceptions cannot propagate (a weakref callback of
the import system, a gc callback, a `__del__`), the exception is "ignored": printed as a
traceback and dropped, and the job would run on. `install()` hooks `sys.unraisablehook`: such
a KeyboardInterrupt is not printed but delivered again to the main thread, and `seen()` tells
the CLI that whatever error follows is the interrupt's doing.
"""

from __future__ import annotations

import _thread
import sys

_seen = False
_previous = None


def install() -> None:
    global _previous
    if _previous is None:
        _previous = sys.unraisablehook
        sys.unraisablehook = _hook


def seen() -> bool:
    return _seen


def _hook(unraisable) -> None:
    global _seen
    if isinstance(unraisable.exc_type, type) and issubclass(unraisable.exc_type, KeyboardInterrupt):
        _seen = True
        _thread.interrupt_main()  # again, outside the callback that swallowed it
        return
    (_previous or sys.__unraisablehook__)(unraisable)
