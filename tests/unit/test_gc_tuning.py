"""A service process tunes the cyclic garbage collector once it has loaded its state: what
startup made is frozen out of the collector's sight, and the young generations are
collected less often (docs/decisions/0002-gc-tuning.md)."""

from __future__ import annotations

import gc
import weakref

from arc_common import server


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_tune_gc_freezes_what_startup_made_and_raises_the_thresholds() -> None:
    before = gc.get_threshold()
    loaded = [Node() for _ in range(100)]
    try:
        server.tune_gc()
        assert gc.isenabled() and gc.get_threshold() == server.GC_THRESHOLDS
        assert gc.get_freeze_count() >= len(loaded)
        startup = {id(n) for n in loaded}
        assert not any(id(o) in startup for o in gc.get_objects())  # never walked again
        made_later = weakref.ref(Node())  # a cycle made after startup, dropped at once
        gc.collect()
        assert made_later() is None  # the collector still frees what comes later
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
