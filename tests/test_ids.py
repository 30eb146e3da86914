"""Ids stay unique when the application seeds the global random generator."""

from __future__ import annotations

import random

from exporters.telemetry.provider import PrivateRandomIdGenerator
from instrumentation._ids import new_run_id


def test_run_ids_do_not_repeat_after_random_seed() -> None:
    """Seeding the global generator twice the same way does not repeat run ids."""
    random.seed(42)
    first = [new_run_id() for _ in range(5)]
    random.seed(42)
    second = [new_run_id() for _ in range(5)]
    assert set(first).isdisjoint(second)


def test_span_ids_do_not_repeat_after_random_seed() -> None:
    """flowtel's id generator ignores the global seed; the SDK's default would repeat."""
    generator = PrivateRandomIdGenerator()
    random.seed(7)
    first = [generator.generate_span_id() for _ in range(5)]
    random.seed(7)
    second = [generator.generate_span_id() for _ in range(5)]
    assert set(first).isdisjoint(second)
    assert all(0 < span_id < 2**64 for span_id in first + second)
