"""The bundled default models and sample image: loadable by name, trained (better than bicubic), small."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from PIL import Image

import ribsr
from ribsr.assets import ASSETS, SAMPLE_IMAGE, NoBundledModelError, bundled_scales, default_model_path
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
