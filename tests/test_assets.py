"""The bundled default models and sample image: loadable by name, trained (better than bicubic), small."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch
from PIL import Image

import ribsr
from ribsr.assets import (
    ASSETS,
    SAMPLE_IMAGE,
    NoBundledModelError,
    bundled_model_path,
    bundled_scales,
    default_model_path,
)
from ribsr.degrade import BicubicDegradation
from ribsr.evaluate import bicubic_upscaler, mod_crop, model_upscaler


def test_bundled_models_are_small_and_carry_their_config():
    assert bundled_scales() == [2, 3, 4]  # all three ship (docs/models.md)
    for scale in bundled_scales():
        path = default_model_path(scale)
        assert path.stat().st_size <= 5 * 2**20
        model = ribsr.load_model("default", scale=scale)
        assert model.config.scale == scale
        assert model.config.attn_type == "RIB" and len(set(model.config.window_sizes)) > 1  # windows cycle


def test_a_scale_without_a_bundled_model_is_refused_by_name():
    with pytest.raises(NoBundledModelError, match=r"no bundled default model for x5 \(bundled: x2"):
        ribsr.load_model("default", scale=5)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bundled_model_beats_bicubic_on_the_sample(scale, datasets_dir, one_thread):
    if scale not in bundled_scales():
        pytest.skip(f"no bundled x{scale} model")
    hr = mod_crop(np.array(Image.open(datasets_dir / "Set5" / "HR" / "butterfly.png")), scale)
    lr = np.array(Image.open(datasets_dir / "Set5" / "LR_bicubic" / f"X{scale}" / f"butterflyx{scale}.png"))
    model = ribsr.load_model("default", scale=scale)
    sr_psnr = ribsr.psnr(model_upscaler(model)(lr), hr, crop_border=scale)
    bicubic_psnr = ribsr.psnr(bicubic_upscaler(scale)(lr), hr, crop_border=scale)
    assert sr_psnr > bicubic_psnr + 1.0, (sr_psnr, bicubic_psnr)


def test_bundled_real_world_model_is_the_default_x4_network():
    assert bundled_scales("real") == [4]  # x4 only (docs/models.md, "real-world x4")
    path = bundled_model_path("real", 4)
    assert path.stat().st_size <= 5 * 2**20
    real, default = ribsr.load_model("real", scale=4), ribsr.load_model("default", scale=4)
    assert real.config == default.config  # same network: --denoise blends their weights
    assert any(not torch.equal(v, default.state_dict()[k]) for k, v in real.state_dict().items())
    with pytest.raises(NoBundledModelError, match=r"no bundled real model for x2 \(bundled: x4\)"):
        ribsr.load_model("real", scale=2)


def test_bundled_escrib_is_the_small_x2_esc_rib_and_beats_bicubic(datasets_dir, one_thread):
    assert bundled_scales("escrib") == [2]  # x2 only (docs/models.md, "ESC-RIB x2")
    path = bundled_model_path("escrib")
    assert path.stat().st_size <= 5 * 2**20
    model = ribsr.load_model("escrib")
    assert isinstance(model, ribsr.ESCRIB) and model.config.scale == 2
    assert sum(p.numel() for p in model.parameters()) == 74_184  # configs/local/train_ESCRIB_small_x2.yml
    hr = mod_crop(np.array(Image.open(datasets_dir / "Set5" / "HR" / "butterfly.png")), 2)
    lr = np.array(Image.open(datasets_dir / "Set5" / "LR_bicubic" / "X2" / "butterflyx2.png"))
    sr_psnr = ribsr.psnr(model_upscaler(model)(lr), hr, crop_border=2)
    assert sr_psnr > ribsr.psnr(bicubic_upscaler(2)(lr), hr, crop_border=2) + 1.0
    with pytest.raises(NoBundledModelError, match=r"no bundled escrib model for x4 \(bundled: x2\)"):
        ribsr.load_model("escrib", scale=4)


def test_real_world_model_beats_the_default_on_jpeg_lr(datasets_dir, one_thread):
    """On the butterfly downscaled and saved as JPEG q=30 the real-world model gains over bicubic where the
    bicubic-trained default model loses (it sharpens the blocks); docs/models.md has the whole-set numbers."""
    hr = mod_crop(np.array(Image.open(datasets_dir / "Set5" / "HR" / "butterfly.png")), 4)
    lr, _ = BicubicDegradation(4, quality=30)(hr)
    bicubic = ribsr.psnr(bicubic_upscaler(4)(lr), hr, crop_border=4)
    real = ribsr.psnr(model_upscaler(ribsr.load_model("real", scale=4))(lr), hr, crop_border=4)
    default = ribsr.psnr(model_upscaler(ribsr.load_model("default", scale=4))(lr), hr, crop_border=4)
    assert real > bicubic + 0.3 and real > default + 0.3, (real, bicubic, default)


def test_sample_image_is_the_set5_butterfly_lr(datasets_dir):
    shipped = np.array(Image.open(SAMPLE_IMAGE))
    assert shipped.shape == (128, 128, 3)
    lr = datasets_dir / "Set5" / "LR_bicubic" / "X2" / "butterflyx2.png"
    assert np.array_equal(shipped, np.array(Image.open(lr)))
    assert SAMPLE_IMAGE.parent == ASSETS


def test_saved_models_get_the_umask_mode(tmp_path):
    path = ribsr.save_model(ribsr.build_model("light", n_blocks=1), tmp_path / "m.safetensors")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
