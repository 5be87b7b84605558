"""prefetch: the same items in order, the producer's error at its place, early exit stops it."""

import threading
import time

import pytest

from sonar_jax.prefetch import prefetch


def test_items_in_order_and_ahead_of_the_consumer():
    produced = []

    def items():
        for i in range(10):
            produced.append(i)
            yield i

    seen = []
    for item in prefetch(items(), depth=3):
        if not seen:
            time.sleep(0.2)
            assert len(produced) >= 4  # the item in hand and three queued behind it
        seen.append(item)
    assert seen == list(range(10))


def test_a_producer_error_reaches_the_consumer_where_it_happened():
    def items():
        yield 1
        raise ValueError("bad row 2")

    got = []
    with pytest.raises(ValueError, match="bad row 2"):
        for item in prefetch(items()):
            got.append(item)
    assert got == [1]


def test_leaving_early_stops_the_producer():
    def forever():
        i = 0
        while True:
            yield i
            i += 1

    before = threading.active_count()
    for item in prefetch(forever(), depth=2):
        if item == 3:
            break
    time.sleep(0.3)
    assert threading.active_count() == before
