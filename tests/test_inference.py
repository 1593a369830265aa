"""Tiling, blending, memory planning, the model descriptor and the Upscaler API, with small stand-in networks."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ribsr import inference
from ribsr.inference import Upscaler
from ribsr.memory import is_out_of_memory, measure_memory_cost
from ribsr.modelinfo import ModelInfo, model_info
from ribsr.planning import MemoryCost, batch_that_fits, choose_tiling, image_buffer_bytes, modelled_memory_cost
from ribsr.tiling import axis_weights, tile_layout, tiled_forward
from ribsr.transforms import dihedral

# The stand-in networks are tiny: one thread is faster, and far faster on a busy machine.
pytestmark = pytest.mark.usefixtures("one_thread")


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = F.mse_loss(a.double().clamp(0, 1), b.double().clamp(0, 1)).item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def smooth_image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A (1, 3, h, w) image in [0, 1] with structure at several scales."""
    g = torch.Generator().manual_seed(seed)
    coarse = F.interpolate(torch.rand(1, 3, h // 4 + 1, w // 4 + 1, generator=g), size=(h, w), mode="bicubic")
    return (0.8 * coarse + 0.2 * torch.rand(1, 3, h, w, generator=g)).clamp(0, 1)


# ---------------------------------------------------------------------- layout and weights
@pytest.mark.parametrize("h,w,tile,overlap,align", [
    (101, 87, 32, 16, 16), (200, 64, 50, 10, 16), (130, 130, 128, 64, 64), (257, 300, 128, None, 64),
])
def test_tile_layout_is_aligned_covers_the_image_and_overlaps(h, w, tile, overlap, align):
    layout = tile_layout(h, w, tile, overlap, align)
    assert layout.tile % align == 0 and layout.tile >= max(tile, 2 * align)
    assert layout.overlap % align == 0 and layout.overlap >= min(overlap or align, layout.tile // 2)
    for spans, length in ((layout.ys, h), (layout.xs, w)):
        assert spans[0][0] == 0 and spans[-1][1] == length
        for (a0, a1), (b0, _) in zip(spans, spans[1:], strict=False):
            assert b0 % align == 0, "tiles start on the window grid"
            assert a1 - b0 == layout.overlap, "neighbours overlap by exactly the overlap"
            assert a1 - a0 == layout.tile
        assert all(stop - start <= layout.tile for start, stop in spans)


def test_tile_layout_rejects_bad_values():
    with pytest.raises(ValueError, match="tile"):
        tile_layout(10, 10, 0, None, 16)
    with pytest.raises(ValueError, match="overlap"):
        tile_layout(10, 10, 32, -1, 16)


@pytest.mark.parametrize("length,tile,scale", [(101, 32, 2), (300, 128, 3), (64, 128, 4)])
def test_blend_weights_sum_to_one_and_are_smooth(length, tile, scale):
    layout = tile_layout(length, length, tile, None, 16)
    weights = axis_weights(layout.xs, scale)
    total = torch.zeros(scale * length)
    for (x0, x1), wgt in zip(layout.xs, weights, strict=True):
        total[scale * x0:scale * x1] += wgt
        if len(layout.xs) > 1:  # no hard cut: a tile's weight changes by < 0.1 between neighbouring pixels
            assert wgt.diff().abs().max() < 0.1
    torch.testing.assert_close(total, torch.ones_like(total), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------- tiled forward
def test_local_model_tiled_equals_untiled(nearest_model):
    model = nearest_model(scale=3)
    x = smooth_image(70, 53)
    ref = model(x)
    out = tiled_forward(model, x, tile=32, overlap=16, batch_size=4)
    assert out.shape == (1, 3, 210, 159)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)


def test_context_dependent_model_tiled_close_to_untiled_and_closer_with_more_context(window_model):
    model = window_model().eval()
    x = smooth_image(101, 87, seed=1)
    with torch.no_grad():
        ref = model(x)
    db = [psnr(tiled_forward(model, x, tile=tile, overlap=overlap), ref)
          for tile, overlap in ((32, 16), (48, 16), (64, 32))]
    # RMS error under 1% of the range even for the smallest tiles, and smaller with larger ones
    assert min(db) > 40
    assert db == sorted(db), db


def test_blending_beats_hard_cuts(window_model):
    """Blended overlapping tiles are far closer to the untiled output than abutting tiles."""
    model = window_model().eval()
    x = smooth_image(96, 96, seed=2)
    with torch.no_grad():
        ref = model(x)
        cut = torch.zeros_like(ref)
        for y0 in range(0, 96, 32):
            for x0 in range(0, 96, 32):
                cut[..., 2 * y0:2 * y0 + 64, 2 * x0:2 * x0 + 64] = model(x[..., y0:y0 + 32, x0:x0 + 32])
    blended = tiled_forward(model, x, tile=48, overlap=16)
    assert psnr(blended, ref) > psnr(cut, ref) + 15  # measured about 51 vs 24 dB


def test_batching_and_batches_of_images_do_not_change_the_result(window_model):
    model = window_model().eval()
    x = torch.cat([smooth_image(70, 90, seed=s) for s in (3, 4)])
    one = tiled_forward(model, x, tile=32, batch_size=1)
    many = tiled_forward(model, x, tile=32, batch_size=5)
    torch.testing.assert_close(one, many, atol=1e-5, rtol=0)
    single = tiled_forward(model, x[1:], tile=32)
    torch.testing.assert_close(many[1:], single, atol=1e-5, rtol=0)


def test_tiles_are_batched_by_shape(nearest_model):
    model = nearest_model()
    tiled_forward(model, smooth_image(100, 100), tile=32, overlap=16, batch_size=8)
    # 6x6 tiles: 25 of 32x32 (batches 8,8,8,1), 5 + 5 edge tiles of 32x20 / 20x32, 1 corner of 20x20
    assert sorted(model.calls) == sorted(
        [(8, 3, 32, 32)] * 3 + [(1, 3, 32, 32), (5, 3, 32, 20), (5, 3, 20, 32), (1, 3, 20, 20)]
    )


def test_progress_reports_every_tile(nearest_model):
    seen = []
    tiled_forward(nearest_model(), smooth_image(64, 64), tile=32, overlap=16, batch_size=2,
                  progress=lambda d, t: seen.append((d, t)))
    assert seen == [(2, 9), (4, 9), (6, 9), (8, 9), (9, 9)]


def test_wrong_scale_is_reported(nearest_model):
    model = nearest_model(scale=2)
    with pytest.raises(ValueError, match="scale 3"):
        tiled_forward(model, smooth_image(40, 40), tile=32, scale=3, align=16)


def test_model_info_of_an_sst_and_of_other_modules(nearest_model):
    import ribsr

    sst = ribsr.build_model("light", scale=3, n_blocks=1, window_sizes=[4, 8, 12], num_heads=[3, 3, 3],
                            ranks=[4, 4, 4])
    info = model_info(sst)
    assert (info.scale, info.multiple_of, info.width) == (3, 24, 48)  # lcm of the windows
    assert info.bias_bytes == 3 * 12**4 * 4 and info.set_bias_cache is not None
    assert torch.bfloat16 in info.dtypes
    assert model_info(nearest_model(scale=4, window_sizes=(16, 32, 48, 96))) == ModelInfo(4, 96, width=3)
    assert model_info(sst, scale=2, multiple_of=1).multiple_of == 1
    with pytest.raises(ValueError, match="ModelInfo"):
        model_info(torch.nn.Identity())
    assert model_info(torch.nn.Identity(), scale=2, multiple_of=4) == ModelInfo(2, 4)
    with pytest.raises(ValueError, match="scale must be a positive integer, got 0"):
        ModelInfo(scale=0)


def test_dtypes_a_model_does_not_support_are_refused(nearest_model):
    model = nearest_model()
    model.info = ModelInfo(2, 16, dtypes=(torch.float32,))
    with pytest.raises(ValueError, match="bfloat16"):
        Upscaler(model, dtype="bfloat16")
    assert Upscaler(model, dtype="auto").dtype == torch.float32


# ---------------------------------------------------------------------- self-ensemble
def test_self_ensemble(nearest_model, window_model):
    x = smooth_image(40, 56)
    # nearest upsampling commutes with flips and transposes: the ensemble changes nothing
    plain = Upscaler(nearest_model(), tile=0).upscale(x)
    ens = Upscaler(nearest_model(), tile=0, self_ensemble=True).upscale(x)
    torch.testing.assert_close(ens, plain, atol=1e-6, rtol=0)
    model = window_model()
    plain = Upscaler(model, tile=0).upscale(x)
    ens = Upscaler(model, tile=0, self_ensemble=True).upscale(x)
    manual = sum(dihedral(model(dihedral(x, k)), k, inverse=True) for k in range(8)) / 8
    torch.testing.assert_close(ens, manual.clamp(0, 1), atol=1e-5, rtol=0)
    assert (ens - plain).abs().max() > 1e-3


# ---------------------------------------------------------------------- memory
def test_choose_tiling_fits_the_budget():
    cost = MemoryCost(fixed_bytes=1e6, bytes_per_pixel=20_000.0, method="test")
    assert choose_tiling(100, 100, 2, 16, budget_bytes=1e9, cost=cost) == (None, 1)
    budget = 2e9
    tile, batch = choose_tiling(2000, 2000, 2, 64, budget_bytes=budget, cost=cost)
    assert tile is not None and tile % 64 == 0 and batch >= 1
    used = image_buffer_bytes(2000, 2000, 2) + cost.bytes_for(batch * tile * tile)
    assert used <= budget
    bigger = tile + 64  # the largest aligned tile was chosen
    assert image_buffer_bytes(2000, 2000, 2) + cost.bytes_for(bigger * bigger) > budget


def test_batch_that_fits():
    cost = MemoryCost(fixed_bytes=0.0, bytes_per_pixel=1000.0, method="test")
    buffers = image_buffer_bytes(1000, 1000, 2)
    # room for exactly 3 tiles of 128x128 (a tile of 100 is rounded up to 128)
    budget = buffers + 3 * 128 * 128 * 1000 + 1
    assert batch_that_fits(1000, 1000, 2, 64, 100, budget, cost) == 3
    assert batch_that_fits(1000, 1000, 2, 64, 128, budget * 10, cost) == 8  # capped
    assert batch_that_fits(1000, 1000, 2, 64, 128, 1.0, cost) == 1  # at least one


def test_choose_tiling_never_goes_below_two_windows():
    cost = MemoryCost(0.0, 1e6, "test")
    assert choose_tiling(500, 500, 2, 64, budget_bytes=1e6, cost=cost) == (128, 1)


def test_a_budget_below_the_image_buffers_is_named_as_such(caplog):
    cost = MemoryCost(0.0, 1000.0, "test")
    with caplog.at_level("WARNING", logger="ribsr.tiling"):
        choose_tiling(12000, 12000, 2, 16, budget_bytes=7 * 2**30, cost=cost)  # buffers: ~20 GiB
    assert "this 12000x12000 image's own buffers" in caplog.text and "about 20.38 GiB" in caplog.text
    assert "what one" not in caplog.text  # not a tile that does not fit: no tile size could help


def test_measured_memory_cost_grows_with_the_feature_width(window_model):
    narrow = measure_memory_cost(window_model(dim=8), align=16)
    wide = measure_memory_cost(window_model(dim=64), align=16)
    assert narrow.method == wide.method == "measured on cpu"
    # 8x the channels: several times the activations per pixel
    assert wide.bytes_per_pixel > 3 * narrow.bytes_per_pixel, (narrow, wide)


def test_out_of_memory_detection():
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: "
                                         "not enough memory: you tried to allocate 123 bytes."))
    assert is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))


class _Fussy(torch.nn.Module):
    """Fails like an allocator on inputs of more than ``limit`` pixels per batch."""

    def __init__(self, inner, limit, message="DefaultCPUAllocator: not enough memory"):
        super().__init__()
        self.inner, self.limit, self.message = inner, limit, message
        self.info = inner.info
        self.sizes: list[int] = []

    def forward(self, x):
        self.sizes.append(x.shape[0] * x.shape[2] * x.shape[3])
        if self.sizes[-1] > self.limit:
            raise RuntimeError(self.message)
        return self.inner(x)


def test_out_of_memory_retries_with_smaller_tiles_and_remembers(window_model, caplog):
    inner = window_model().eval()
    model = _Fussy(inner, limit=40 * 40)
    up = Upscaler(model, tile=0)
    x = smooth_image(100, 90)
    with caplog.at_level("WARNING", logger="ribsr.inference"):
        out = up.upscale(x)
    assert "out of memory" in caplog.text
    torch.testing.assert_close(out, tiled_forward(inner, x, 32).clamp(0, 1), atol=1e-5, rtol=0)
    assert up.plan(100, 90) == (32, 1)  # 100 -> 48 -> 32 (needs 2*16 at least), kept for later images
    model.sizes.clear()
    up.upscale(x)
    assert max(model.sizes) <= 32 * 32  # later images start at the smaller tile


def test_other_errors_and_hopeless_out_of_memory_propagate(window_model):
    with pytest.raises(RuntimeError, match="shape mismatch"):
        Upscaler(_Fussy(window_model(), 0, "shape mismatch"), tile=0).upscale(smooth_image(40, 40))
    with pytest.raises(RuntimeError, match="not enough memory"):
        Upscaler(_Fussy(window_model(), 10), tile=0).upscale(smooth_image(40, 40))


def test_max_memory_plans_tiles(window_model):
    up = Upscaler(window_model(), max_memory=0.001)  # 1 MiB: far too little for a 400x400 image
    tile, batch = up.plan(400, 400)
    assert tile == 32 and batch == 1
    assert Upscaler(window_model(), max_memory=8).plan(64, 64) == (None, 1)
    assert Upscaler(window_model(), tile=64, batch_size=3).plan(400, 400) == (64, 3)
    assert Upscaler(window_model(), tile=32, max_memory=8).plan(400, 400) == (32, 8)  # batch from memory
    assert Upscaler(window_model(), tile=0).plan(400, 400) == (None, 1)


def test_upscaler_rejects_bad_settings(window_model):
    with pytest.raises(ValueError, match="tile"):
        Upscaler(window_model(), tile="big")
    with pytest.raises(ValueError, match="max_memory"):
        Upscaler(window_model(), max_memory=0)
    with pytest.raises(ValueError, match="dtype"):
        Upscaler(window_model(), dtype="float8")
    with pytest.raises(TypeError, match="list"):
        Upscaler(window_model()).upscale([1, 2, 3])


@pytest.mark.parametrize("option,value,message", [
    ("overlap", -3, r"overlap must be None \(one alignment unit\) or a number of pixels, an integer >= 0; got -3"),
    ("overlap", 1.5, "overlap must be .*, an integer >= 0; got 1.5"),
    ("tile", -1, "tile must be 'auto', None or a number of pixels .*; got -1"),
    ("tile", float("nan"), "tile must be .*; got nan"),
    ("batch_size", 0, "batch_size must be .*, an integer >= 1; got 0"),
    ("batch_size", True, "batch_size must be .*; got True"),
    ("max_memory", float("nan"), r"max_memory must be a positive number of GiB \(None: the memory free now\), got nan"),
    ("max_memory", -1, "max_memory must be a positive number of GiB .*, got -1"),
    ("max_memory", "2", "max_memory must be a positive number of GiB .*, got '2'"),
])
def test_upscaler_names_a_bad_setting_and_its_value(window_model, option, value, message):
    """overlap=-3 was accepted, max_memory=nan failed with 'cannot convert float NaN to integer'."""
    with pytest.raises(ValueError, match=message):
        Upscaler(window_model(), **{option: value})
    assert Upscaler(window_model(), tile=np.int64(32), overlap=0, batch_size=np.int32(2)).tile == 32
    assert Upscaler(window_model(), max_memory=float("inf")).max_memory == float("inf")


@pytest.mark.parametrize("shape", [(10,), (), (2, 3, 4, 5)])
def test_upscale_an_array_of_another_rank_names_its_shape(nearest_model, shape):
    """A 1-D array was an IndexError."""
    with pytest.raises(ValueError, match=rf"expected an \(H, W\) or \(H, W, 1\|3\|4\) array, got shape "
                                         rf"{re.escape(str(shape))}"):
        Upscaler(nearest_model()).upscale(np.zeros(shape, np.uint8))


def test_dtype_auto_is_float32_on_cpu(window_model):
    assert Upscaler(window_model(), device="cpu").dtype == torch.float32
    up = Upscaler(window_model(), device="cpu", dtype="bfloat16", tile=32)
    assert next(up.model.parameters()).dtype == torch.bfloat16
    out = up.upscale(smooth_image(40, 40))
    assert out.dtype == torch.float32 and out.shape == (1, 3, 80, 80)


# ---------------------------------------------------------------------- kinds of images
def test_upscale_tensor_keeps_rank_dtype_and_clips(nearest_model, window_model):
    up = Upscaler(nearest_model(), tile=32)
    x = smooth_image(40, 30)[0].double()
    y = up.upscale(x)
    assert y.shape == (3, 80, 60) and y.dtype == torch.float64
    bright = torch.full((1, 3, 32, 32), 0.99)
    assert window_model()(bright).max() > 1  # this network overshoots; the upscaler clips
    assert Upscaler(window_model(), tile=0).upscale(bright).max() <= 1
    assert up.upscale(torch.rand(2, 3, 8, 8)).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="tensor"):
        up.upscale(torch.rand(4, 8, 8))


@pytest.mark.parametrize("shape,dtype", [((20, 30), np.uint8), ((20, 30, 3), np.uint8),
                                         ((20, 30, 1), np.uint16), ((20, 30, 3), np.float32)])
def test_upscale_numpy_returns_the_same_kind(nearest_model, shape, dtype):
    rng = np.random.default_rng(0)
    high = {np.uint8: 256, np.uint16: 65536}.get(dtype)
    arr = rng.integers(0, high, shape).astype(dtype) if high else rng.random(shape).astype(dtype)
    out = Upscaler(nearest_model(), tile=0).upscale(arr)
    assert out.dtype == arr.dtype and out.shape == (40, 60, *shape[2:])
    # nearest upsampling reproduces every input sample exactly (gray goes through RGB and back)
    np.testing.assert_array_equal(out[::2, ::2], arr) if high else \
        np.testing.assert_allclose(out[::2, ::2], arr, atol=1e-6)


@pytest.mark.parametrize("mode", ["L", "RGB", "I;16"])
def test_upscale_pil_keeps_the_mode(nearest_model, mode):
    arr = np.random.default_rng(1).integers(0, 256 if mode != "I;16" else 65536, (12, 10, 3))
    im = Image.fromarray(arr.astype(np.uint8)) if mode == "RGB" else \
        Image.fromarray(arr[..., 0].astype(np.uint8 if mode == "L" else np.uint16))
    assert im.mode == mode
    out = Upscaler(nearest_model(), tile=0).upscale(im)
    assert out.mode == mode and out.size == (20, 24)
    np.testing.assert_array_equal(np.asarray(out)[::2, ::2], np.asarray(im))


@pytest.mark.parametrize("kind", ["numpy", "tensor"])
def test_non_finite_input_is_refused_with_count_and_position(nearest_model, kind):
    arr = np.random.default_rng(0).random((12, 10, 3)).astype(np.float32)
    arr[3, 4, 1] = np.nan
    arr[5, 6, 0] = np.inf
    arr[7, 8, 2] = -np.inf
    image = arr if kind == "numpy" else torch.from_numpy(arr).permute(2, 0, 1)  # (3, H, W)
    where = "row 3, column 4, channel 1" if kind == "numpy" else "channel 0, row 5, column 6"
    with pytest.raises(ValueError, match=rf"3 non-finite values \(1 NaN, 2 inf\).*first at {where}"):
        Upscaler(nearest_model(), tile=0).upscale(image)


@pytest.mark.parametrize("kind", ["numpy", "tensor"])
def test_float_input_outside_0_1_is_refused_with_the_range_found(nearest_model, kind):
    arr = np.random.default_rng(0).integers(0, 256, (12, 10, 3)).astype(np.float32)  # 0..255 as floats
    image = arr if kind == "numpy" else torch.from_numpy(arr).permute(2, 0, 1)[None]  # (1, 3, H, W)
    with pytest.raises(ValueError, match=r"ranges over \[0, 255\].*expected \[0, 1\].*255"):
        Upscaler(nearest_model(), tile=0).upscale(image)
    negative = np.full((12, 10), -0.5, np.float64)
    with pytest.raises(ValueError, match=r"ranges over \[-0.5, -0.5\]"):
        Upscaler(nearest_model(), tile=0).upscale(negative)
    slight = np.clip(arr / 255, 0, 1) + 0.005  # rounding-sized excursions are clipped, not refused
    assert Upscaler(nearest_model(), tile=0).upscale(slight).max() <= 1


@pytest.mark.parametrize("image", [
    np.zeros((0, 0, 3), np.uint8), np.zeros((5, 0), np.float32), torch.zeros(1, 3, 0, 4),
    torch.zeros(0, 3, 4, 4), Image.new("RGB", (0, 0)),
], ids=["numpy 0x0", "numpy 5x0", "tensor 0x4", "tensor empty batch", "PIL 0x0"])
def test_empty_images_are_refused(nearest_model, image):
    with pytest.raises(ValueError, match="empty image"):
        Upscaler(nearest_model(), tile=0).upscale(image)


def test_an_animated_pil_image_warns_that_one_frame_is_upscaled(nearest_model, tmp_path, caplog):
    frames = [Image.new("RGB", (6, 4), (80 * i, 0, 0)) for i in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    with Image.open(tmp_path / "anim.gif") as im, caplog.at_level("WARNING", logger="ribsr.inference"):
        out = Upscaler(nearest_model(), tile=0).upscale(im)
    assert out.size == (12, 8)
    assert "anim.gif has 3 frames" in caplog.text and "only the current frame (0)" in caplog.text


def test_alpha_is_upscaled_with_bicubic_imresize(nearest_model):
    from ribsr.imresize import imresize

    rng = np.random.default_rng(2)
    arr = rng.integers(0, 65536, (12, 10, 4)).astype(np.uint16)
    out = Upscaler(nearest_model(), tile=0).upscale(arr)
    assert out.shape == (24, 20, 4) and out.dtype == np.uint16
    expected = np.clip(imresize(arr[..., 3].astype(np.float32) / 65535, 2), 0, 1)
    np.testing.assert_allclose(out[..., 3] / 65535, expected, atol=1 / 65535)
    np.testing.assert_array_equal(out[::2, ::2, :3], arr[..., :3])  # colour through the (nearest) model
    im = Image.fromarray(arr[..., :4].astype(np.uint8))  # RGBA
    assert Upscaler(nearest_model(), tile=0).upscale(im).mode == "RGBA"


def test_auto_tile_skips_measuring_when_the_image_clearly_fits(window_model, monkeypatch):
    def no_measuring(*args, **kwargs):
        raise AssertionError("measured although the image fits")

    monkeypatch.setattr(inference, "measure_memory_cost", no_measuring)
    assert Upscaler(window_model(), max_memory=4).plan(300, 200) == (None, 1)
    with pytest.raises(AssertionError, match="measured"):
        Upscaler(window_model(), max_memory=0.01).plan(3000, 2000)


# ---------------------------------------------------------------------- the real network
@pytest.fixture(scope="module")
def small_sst():
    """A two-block SST with windows up to 32 (random weights: enough to test tiling fidelity)."""
    import ribsr

    torch.manual_seed(0)
    return ribsr.build_model("light", scale=2, dim=12, n_blocks=2, window_sizes=(4, 8, 16, 8, 16, 32)).eval()


def test_sst_tiled_close_to_untiled(small_sst):
    model = small_sst
    assert model_info(model).multiple_of == 32
    x = smooth_image(100, 90, seed=5)
    with torch.no_grad():
        ref = model(x)
    out = tiled_forward(model, x, tile=64)
    assert psnr(out, ref) >= 55  # measured 65.5 dB; 8-bit quantisation alone is 59 dB


def test_modelled_cost_over_estimates_the_measured_one(small_sst):
    model = small_sst
    modelled = modelled_memory_cost(model)
    measured = measure_memory_cost(model, align=32)
    assert measured.method == "measured on cpu"
    for side in (128, 512):
        assert modelled.bytes_for(side * side) > measured.bytes_for(side * side), (modelled, measured)


@pytest.mark.slow
def test_light_tiled_vs_untiled_on_set14(datasets_dir):
    """The acceptance check: tiles of 128 (the smallest) with the default overlap, >= 50 dB on every
    Set14 image, random-init ``light`` x2 (about 40 minutes on 2 busy CPU cores)."""
    import ribsr
    from ribsr.imageio import read_image

    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = ribsr.build_model("light", scale=2).eval()
    files = sorted((datasets_dir / "Set14" / "LR_bicubic" / "X2").glob("*.png"))
    assert len(files) == 14
    for f in files:
        x = torch.from_numpy(read_image(f).rgb).permute(2, 0, 1)[None]
        with torch.no_grad():
            ref = model(x)
        assert psnr(tiled_forward(model, x, tile=128), ref) >= 50, f.name


def test_max_memory_gives_a_quarter_to_the_bias_cache(nearest_model):
    from ribsr.build import build_model
    from ribsr.planning import GIB

    model = build_model("light", n_blocks=1)
    Upscaler(model, max_memory=2)
    budget = model.body[0][0].attn.pos.bias_budget
    assert budget.max_bytes == int(0.25 * 2 * GIB)
    assert all(m.pos.bias_budget is budget for m in model.modules() if hasattr(m, "pos"))
    given = []
    stand_in = nearest_model()
    stand_in.info = ModelInfo(2, 16, set_bias_cache=given.append)
    Upscaler(stand_in, max_memory=0.5)
    assert given == [int(0.25 * 0.5 * GIB)]


# ---------------------------------------------------------------------- outputs assembled on disk
def _pixels_of(path):
    """(rgb, alpha, bit depth) of an image file as ribsr reads it (integer samples map one to one)."""
    from ribsr.imageio import read_image

    img = read_image(path)
    return img.rgb, img.alpha, img.bit_depth, img.grayscale


@pytest.mark.parametrize("fmt,dtype,channels,icc", [
    ("PNG", np.uint8, 3, False), ("PNG", np.uint8, 0, False), ("PNG", np.uint8, 4, True),
    ("PNG", np.uint16, 3, False), ("PNG", np.uint16, 0, False), ("PNG", np.uint16, 4, True),
    ("TIFF", np.uint8, 3, False), ("TIFF", np.uint16, 4, False), ("TIFF", np.uint16, 0, True),
])
def test_an_output_streamed_to_disk_is_identical_to_the_in_memory_one(window_model, tmp_path, fmt, dtype,
                                                                      channels, icc):
    from ribsr import diskarray, imageio
    from ribsr.imageio import from_array

    rng = np.random.default_rng(5)
    shape = (37, 50) if channels == 0 else (37, 50, channels)
    img = from_array(rng.integers(0, np.iinfo(dtype).max + 1, shape).astype(dtype))
    img.icc_profile = b"not a real profile, carried as bytes" if icc else None
    up = Upscaler(window_model(), tile=16, batch_size=2)  # 3x4 tiles of windows up to 16: blending matters
    suffix = ".png" if fmt == "PNG" else ".tif"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(diskarray, "BLOCK_BYTES", 1000)  # blocks of a few rows: many blocks on a tiny image
        mp.setattr(imageio, "STREAM_TIFF_TILE", 16)  # TIFF tiles of 16: 5x7 tiles, partial ones at the border
        up.upscale_file(img, tmp_path / f"streamed{suffix}", fmt, stream=True)
    up.upscale_file(img, tmp_path / f"memory{suffix}", fmt, stream=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"memory{suffix}", f"streamed{suffix}"]  # nothing else
    a, b = _pixels_of(tmp_path / f"memory{suffix}"), _pixels_of(tmp_path / f"streamed{suffix}")
    assert a[0].shape == (74, 100, 3) and a[2:] == b[2:]
    np.testing.assert_array_equal(a[0], b[0])  # exactly: the same samples
    if channels == 4:
        np.testing.assert_array_equal(a[1], b[1])
    else:
        assert a[1] is None and b[1] is None
    if fmt == "PNG" and dtype == np.uint16 and channels:  # pypng both ways: the same file
        assert (tmp_path / "memory.png").read_bytes() == (tmp_path / "streamed.png").read_bytes()


class FailsOnThirdTile(torch.nn.Module):
    def __init__(self, inner, exc):
        super().__init__()
        self.inner, self.exc, self.calls = inner, exc, 0
        self.info = inner.info

    def forward(self, x):
        self.calls += 1
        if self.calls == 3:
            raise self.exc
        return self.inner(x)


@pytest.mark.parametrize("exc", [RuntimeError("broken model"), KeyboardInterrupt()])
def test_a_failure_while_streaming_leaves_no_file(window_model, tmp_path, exc):
    from ribsr.imageio import from_array

    img = from_array(np.random.default_rng(6).integers(0, 256, (40, 40, 3)).astype(np.uint8))
    model = FailsOnThirdTile(window_model(), exc)
    with pytest.raises(type(exc)):
        Upscaler(model, tile=16, batch_size=1).upscale_file(img, tmp_path / "out" / "o.png", stream=True)
    assert model.calls == 3
    assert list((tmp_path / "out").iterdir()) == []  # no accumulator, no partial output


def test_streaming_follows_stream_above_and_refuses_self_ensemble(nearest_model, tmp_path, monkeypatch):
    from ribsr import diskarray
    from ribsr.imageio import from_array

    opened = []
    real = diskarray.DiskArray

    class Spy(real):
        def __init__(self, *args, **kwargs):
            opened.append(args)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(inference, "DiskArray", Spy)
    img = from_array(np.zeros((8, 6, 3), np.uint8))
    held = image_buffer_bytes(8, 6, 2) / 1024**3
    Upscaler(nearest_model(), tile=0, stream_above=held * 1.01).upscale_file(img, tmp_path / "a.png")
    assert opened == []
    Upscaler(nearest_model(), tile=0, stream_above=held * 0.99).upscale_file(img, tmp_path / "b.png")
    assert opened == [((1, 3, 16, 12), tmp_path)]
    with pytest.raises(ValueError, match="self-ensemble is not supported for an output assembled on disk"):
        Upscaler(nearest_model(), stream_above=0, self_ensemble=True).upscale_file(img, tmp_path / "c.png")
    assert Upscaler(nearest_model(), stream_above=0, self_ensemble=True).upscale_file(
        img, tmp_path / "d.png", stream=False) == []
    with pytest.raises(ValueError, match="stream_above"):
        Upscaler(nearest_model(), stream_above=-1)
    # With the default threshold, self-ensemble outputs stay in memory instead of being refused.
    monkeypatch.setattr(inference, "STREAM_ABOVE_GIB", 0.0)
    assert Upscaler(nearest_model(), self_ensemble=True).upscale_file(img, tmp_path / "e.png") == []
    assert opened == [((1, 3, 16, 12), tmp_path)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png", "d.png", "e.png"]


def test_tiled_forward_into_a_disk_array_is_bit_identical(window_model, tmp_path):
    from ribsr.diskarray import DiskArray

    x = smooth_image(45, 70)
    model = window_model()
    expected = tiled_forward(model, x, 16, None, 3)
    released = []
    with DiskArray((1, 3, 90, 140), tmp_path) as acc:
        y = tiled_forward(model, x, 16, None, 3, out=torch.from_numpy(acc.array),
                          release=lambda: (released.append(1), acc.release()))
        assert torch.equal(y, expected)
        del y
    assert len(released) > 3
    with pytest.raises(ValueError, match="out must be a float32 tensor of shape"):
        tiled_forward(model, x, 16, out=torch.zeros(1, 3, 90, 139))


def test_an_output_on_disk_leaves_the_memory_budget_to_the_tiles():
    cost = MemoryCost(1e6, 3000.0, "test")
    # 4096x4096 at x4 with 4 GiB: the buffers held in memory (8.4 GiB) leave nothing, on disk they do
    in_memory = choose_tiling(4096, 4096, 4, 64, 4 * 1024**3, cost)
    on_disk = choose_tiling(4096, 4096, 4, 64, 4 * 1024**3, cost, output_in_memory=False)
    assert in_memory[0] == 128 and on_disk[0] >= 576
    assert image_buffer_bytes(100, 100, 4, output_in_memory=False) == 100 * 100 * (24 + 16 * 4)


def test_an_out_of_memory_retry_while_streaming_starts_from_zero(window_model, tmp_path):
    from ribsr.imageio import from_array

    class OutOfMemoryOnce(torch.nn.Module):  # the third tile of the first try runs out of memory
        def __init__(self, inner):
            super().__init__()
            self.inner, self.info, self.calls = inner, inner.info, 0

        def forward(self, x):
            self.calls += 1
            if self.calls == 3:
                raise RuntimeError("CPU: not enough memory: you tried to allocate 1 bytes")
            return self.inner(x)

    img = from_array(np.random.default_rng(7).integers(0, 256, (90, 100, 3)).astype(np.uint8))
    inner = window_model()
    up = Upscaler(OutOfMemoryOnce(inner), tile=64, batch_size=1)
    up.upscale_file(img, tmp_path / "streamed.png", stream=True)
    assert up.plan(90, 100) == (32, 1)  # retried with tiles of 32
    Upscaler(inner, tile=32, batch_size=1).upscale_file(img, tmp_path / "memory.png", stream=False)
    np.testing.assert_array_equal(_pixels_of(tmp_path / "streamed.png")[0], _pixels_of(tmp_path / "memory.png")[0])
