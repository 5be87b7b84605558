"""Runs an iterator a few items ahead in a background thread, so host work (reading files,
tokenizing) overlaps device work in the caller's thread.

JAX releases the GIL while a compiled program runs, and SentencePiece while it encodes, so a
producer thread and the consumer make progress at the same time on separate cores.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

from sonar_jax import stopping

T = TypeVar("T")
_DONE = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Yields what `items` yields, computing up to `depth` items ahead in a daemon thread.

    An exception in the producer is re-raised in the consumer at the item where it happened;
    closing the generator (or leaving the loop early) stops the producer.
    """
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as error:  # handed to the consumer, who decides
            put(_Failure(error))
            return
        put(_DONE)

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            stopping.check()
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
