"""ribsr.planning: tile and batch decisions are arithmetic on a cost and a budget (Upscaler.plan answers by it)."""

from __future__ import annotations

import pytest

from ribsr.planning import GIB, MemoryCost, image_buffer_bytes, plan_tiling

COST = MemoryCost(fixed_bytes=0.0, bytes_per_pixel=1000.0, method="test")


def _never() -> MemoryCost:
    raise AssertionError("measured although the modelled cost already fits")


def test_auto_does_not_measure_when_the_image_fits_by_the_model():
    assert plan_tiling(64, 64, 2, 8, 1 * GIB, "auto", COST, _never) == (None, 1)


def test_auto_tiles_by_the_measured_cost_when_the_model_does_not_fit():
    calls = []

    def measured() -> MemoryCost:
        calls.append(1)
        return COST

    h = w = 1024
    budget = image_buffer_bytes(h, w, 2) + 1000.0 * 256 * 256  # room for one 256x256 tile
    tile, batch = plan_tiling(h, w, 2, 8, budget, "auto", MemoryCost(0.0, 1e6, "big"), measured)
    assert calls == [1] and tile == 256 and batch == 1


@pytest.mark.parametrize("tile,batch_size,cap,expected", [
    (0, None, None, (None, 1)),
    (128, 3, None, (128, 3)),
    (128, None, 64, (64, 8)),  # the cap after an out-of-memory error; the batch was planned for 128
    ("auto", None, 32, (32, 1)),  # no tiling by the model, but capped: the cap wins
])
def test_given_tiles_batches_and_caps(tile, batch_size, cap, expected):
    assert plan_tiling(64, 64, 2, 8, 1 * GIB, tile, COST, lambda: COST, batch_size=batch_size,
                       tile_cap=cap) == expected
