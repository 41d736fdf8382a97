"""The CPU benchmark's plan of a round: every cell reaches its concurrency, and calls add up."""

from __future__ import annotations

import pytest

from benchmarks.bench_overhead import (
    CONCURRENCIES,
    MAX_BATCHES,
    MIN_BATCHES,
    SIZES,
    batches,
    cell_calls,
)


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("concurrency", CONCURRENCIES)
@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0])
def test_every_batch_of_a_cell_runs_twice_its_concurrency(
    size: str, concurrency: int, scale: float
) -> None:
    n = cell_calls(size, concurrency, scale)
    plan = batches(n, concurrency)
    assert sum(plan) == n
    assert MIN_BATCHES <= len(plan) <= MAX_BATCHES
    assert min(plan) >= 2 * concurrency  # C calls in flight for most of every batch
    assert max(plan) - min(plan) <= 1


def test_a_fixed_n_smaller_than_a_batch_is_one_batch() -> None:
    assert batches(100, 256) == [100]
    assert batches(7, 1) == [7]


def test_small_concurrency_is_interleaved_finely() -> None:
    assert batches(160, 1) == [10] * 16
