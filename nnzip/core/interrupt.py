"""Ctrl-C that is never lost.

Python raises :class:`KeyboardInterrupt` wherever the main thread is when SIGINT arrives. When
that happens to be a weakref callback or a ``__del__`` (PyTorch runs many), the interpreter prints
"Exception ignored" and carries on, and the run would go on as if Ctrl-C had not been pressed
(seen: a fine-tune stage finishing normally after the interrupt). So the CLI's handler also
*records* the request, and the loops that take long call :func:`check_interrupt` between steps,
which raises it again where it cannot be swallowed.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

_requested = False


def _on_sigint(signum, frame) -> None:
    global _requested
    _requested = True
    raise KeyboardInterrupt


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Record Ctrl-C for :func:`check_interrupt` within the block (the CLI's ``main``); the
    previous SIGINT handler is restored afterwards. Outside the main thread it does nothing."""
    global _requested
    _requested = False
    try:
        previous = signal.signal(signal.SIGINT, _on_sigint)
    except ValueError:  # signal handlers can only be set from the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _requested = False


def check_interrupt() -> None:
    """Raise KeyboardInterrupt if Ctrl-C was pressed, even if its first raise was swallowed."""
    if _requested:
        raise KeyboardInterrupt
