"""A worker hides its start-up objects from the cyclic collector (short full passes)."""

from __future__ import annotations

import gc

import pytest

from gateway.server import settle_garbage_collector

pytestmark = pytest.mark.unit


def test_start_up_objects_are_frozen_and_young_collections_are_rarer() -> None:
    threshold = gc.get_threshold()
    try:
        settle_garbage_collector()
        assert gc.get_freeze_count() > 10_000  # the libraries' objects, at least
        assert gc.get_threshold()[0] == 7_000
        made_later = [[i] for i in range(1000)]
        tracked = len(gc.get_objects())
        assert tracked < gc.get_freeze_count()  # a full pass walks far fewer objects
        assert made_later
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
