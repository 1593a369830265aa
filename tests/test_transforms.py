"""ribsr.transforms: the 8 flips/rotations, the same for tensors and numpy arrays, and BasicSR's augmentation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from ribsr.transforms import augment_index, dihedral


def test_dihedral_inverse_round_trips_all_eight():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    outs = set()
    for k in range(8):
        y = dihedral(x, k)
        outs.add(tuple(y.flatten().tolist()))
        torch.testing.assert_close(dihedral(y, k, inverse=True), x, atol=0, rtol=0)
    assert len(outs) == 8


def test_numpy_and_torch_agree_on_any_axes():
    img = np.arange(4 * 5 * 3).reshape(4, 5, 3)  # (H, W, C)
    for k in range(8):
        as_np = dihedral(img, k, axes=(0, 1))
        as_torch = dihedral(torch.from_numpy(img).permute(2, 0, 1), k).permute(1, 2, 0)  # via (C, H, W)
        assert np.array_equal(as_np, as_torch.numpy())
        assert np.array_equal(dihedral(as_np, k, inverse=True, axes=(0, 1)), img)


@pytest.mark.parametrize("hflip,vflip,transpose", list(itertools.product([False, True], repeat=3)))
def test_augment_index_is_basicsr_order(hflip, vflip, transpose):
    img = np.random.default_rng(0).integers(0, 256, (6, 7, 3))
    expected = img[:, ::-1] if hflip else img  # BasicSR: flip left-right, then up-down, then transpose
    expected = expected[::-1] if vflip else expected
    expected = expected.transpose(1, 0, 2) if transpose else expected
    assert np.array_equal(dihedral(img, augment_index(hflip, vflip, transpose), axes=(0, 1)), expected)


def test_k_out_of_range():
    with pytest.raises(ValueError, match="k must be from 0 to 7, got 8"):
        dihedral(np.zeros((2, 2)), 8)
