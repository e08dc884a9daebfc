"""Ctrl-C that is never lost, and a ``kill`` handled like Ctrl-C.

Python raises :class:`KeyboardInterrupt` wherever the main thread is when SIGINT arrives. When
that happens to be a weakref callback or a ``__del__`` (PyTorch runs many), the interpreter prints
"Exception ignored" and carries on, and the run would go on as if Ctrl-C had not been pressed
(seen: a fine-tune stage finishing normally after the interrupt). So the CLI's handler also
*records* the request, and the loops that take long call :func:`check_interrupt` between steps,
which raises it again where it cannot be swallowed.

SIGTERM (what ``kill``, a batch scheduler or a container stop sends) would otherwise end the
process on the spot and lose the finished results; it takes the same path as Ctrl-C, and
:func:`exit_status` says which signal it was (the shell's 128 + signal number: 130, 143).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

#: The signals handled as an interrupt request.
HANDLED = (signal.SIGINT, signal.SIGTERM)

_requested = False
#: The signal of the last request; kept after the block ends, for the exit status.
_last_signal = signal.SIGINT


def _on_sigint(signum, frame) -> None:
    global _requested, _last_signal
    _requested = True
    _last_signal = signal.Signals(signum)
    raise KeyboardInterrupt


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Record Ctrl-C (and SIGTERM) for :func:`check_interrupt` within the block (the CLI's
    ``main``); the previous handlers are restored afterwards. Outside the main thread it does
    nothing."""
    global _requested, _last_signal
    _requested, _last_signal = False, signal.SIGINT
    previous = {}
    try:
        for signum in HANDLED:
            previous[signum] = signal.signal(signum, _on_sigint)
    except ValueError:  # signal handlers can only be set from the main thread
        yield
        return
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _requested = False


def check_interrupt() -> None:
    """Raise KeyboardInterrupt if Ctrl-C was pressed, even if its first raise was swallowed."""
    if _requested:
        raise KeyboardInterrupt


def exit_status() -> int:
    """The exit status for the last interrupt: 128 + its signal number (130 for Ctrl-C, 143 for
    SIGTERM), as a shell reports a process that signal ended."""
    return 128 + int(_last_signal)
