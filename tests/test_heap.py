"""`daemon.heap`: what a cycle leaves alive is frozen out of collections; garbage in
reference cycles is collected at the full collection every `full_every` cycles."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from daemon.heap import CycleHeap


class Node:
    def __init__(self) -> None:
        self.other: Node = self  # a reference cycle: only the collector frees it


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()


def test_a_cycle_freezes_what_is_alive_and_the_full_collection_frees_cycles() -> None:
    heap = CycleHeap(full_every=3)
    node = Node()
    gone = weakref.ref(node)
    heap.cycle_ended()
    assert gc.get_freeze_count() > 0
    del node
    gc.collect()  # frozen: a collection does not look at it
    assert gone() is not None
    heap.cycle_ended()
    assert gone() is not None
    heap.cycle_ended()  # the third: everything unfrozen and collected, then frozen again
    assert gone() is None
    assert gc.get_freeze_count() > 0


def test_objects_without_cycles_are_freed_while_frozen() -> None:
    heap = CycleHeap(full_every=100)
    leaf = Node()
    leaf.other = Node()  # no cycle through ``leaf``: reference counting frees it
    gone = weakref.ref(leaf)
    heap.cycle_ended()
    del leaf
    assert gone() is None
