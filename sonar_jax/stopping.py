"""A stop asked for by Ctrl-C or SIGTERM, that long-running work notices even when Python lost
the exception.

Python raises KeyboardInterrupt (or a handler's exception) at whatever bytecode the main thread
is running, and when that is a garbage-collection callback (JAX registers one) the exception is
printed as "Exception ignored" and dropped: the run would go on and finish as if never stopped.
So the signal is also recorded here; `check()` re-raises it at safe points: each item that
`prefetch` hands over, each batch of the generation, speech and scoring loops, and before an
output is renamed into place.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from typing import Iterator

_requested: list[int] = []


def _exception(signum: int) -> BaseException:
    if signum == signal.SIGINT:
        return KeyboardInterrupt()
    return SystemExit(128 + signum)


def check() -> None:
    """Raises KeyboardInterrupt / SystemExit(128 + signal) if a stop was requested."""
    if _requested:
        raise _exception(_requested[0])


@contextlib.contextmanager
def on_signals(note: str) -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM record a stop and raise at once (KeyboardInterrupt,
    SystemExit(143)); `note` tells the user what is left. The previous handlers come back after."""
    def stop(signum, frame):
        if not _requested:
            print(f"\nsonar-jax: {signal.Signals(signum).name}: stopping; {note}",
                  file=sys.stderr)
        _requested.append(signum)
        raise _exception(signum)

    def quiet_when_stopping(unraisable):
        """Our own stop, dropped inside a callback, is not news: `check` raises it again."""
        if not (_requested and isinstance(unraisable.exc_value, (KeyboardInterrupt, SystemExit))):
            previous_hook(unraisable)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous_hook, sys.unraisablehook = sys.unraisablehook, quiet_when_stopping
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sys.unraisablehook = previous_hook
        _requested.clear()
