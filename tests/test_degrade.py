"""ribsr.degrade: the second-order and bicubic degradations, their options, option files and test-set helpers."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import yaml
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from ribsr import degrade
from ribsr.degrade import (
    KERNEL_TYPES,
    PRESETS,
    BicubicDegradation,
    DegradationError,
    DegradationOptions,
    SecondOrderDegradation,
    circular_lowpass_kernel,
    degradation_from_option_file,
    degrade_image,
    describe,
    gather_degradation_keys,
    image_rng,
    load_degradation_options,
    mixed_kernel,
    preset,
    to_jsonable,
)
from ribsr.imresize import imresize

REPO_RECIPE = "configs/local/finetune_SST_small_real_x4.yml"


def _image(h: int = 37, w: int = 43, seed: int = 0) -> np.ndarray:
    """A uint8 (h, w, 3) test image with edges, gradients and texture (not only noise)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    rng = np.random.default_rng(seed)
    img = np.stack([128 + 100 * np.sin(x / 3), 255 * (y / h), 60 * ((x + y) % 8 > 3)], axis=-1)
    return np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------- determinism
def test_second_order_same_generator_state_same_bytes_and_record():
    hr = _image()
    d = SecondOrderDegradation(2)
    lr1, rec1 = d(hr, np.random.default_rng(3))
    lr2, rec2 = d(hr, np.random.default_rng(3))
    assert lr1.dtype == np.uint8 and lr1.shape == (18, 21, 3)
    assert lr1.tobytes() == lr2.tobytes() and rec1 == rec2
    lr3, rec3 = d(hr, np.random.default_rng(4))
    assert rec3 != rec1 and not np.array_equal(lr3, lr1)


def test_second_order_record_is_json_and_names_each_stage():
    _, record = SecondOrderDegradation(4)(_image(48, 52), np.random.default_rng(0))
    text = json.dumps(record, allow_nan=False)  # plain Python types only
    assert json.loads(text) == record
    assert {"blur1", "resize1", "noise1", "jpeg1", "second_order", "final"} <= set(record)
    assert record["blur1"]["type"] in (*KERNEL_TYPES, "sinc")
    assert 30 <= record["jpeg1"] <= 95 and 30 <= record["final"]["jpeg"] <= 95


def test_bicubic_prob_gives_plain_samples_and_leaves_the_stream_alone_at_0():
    hr = _image(40, 44)
    plain = SecondOrderDegradation(4, DegradationOptions(bicubic_prob=1.0, bicubic_jpeg_prob=0.0))
    lr, record = plain(hr, np.random.default_rng(2))
    assert record == {"plain": {"resize": "matlab_bicubic", "jpeg": None}}
    assert np.array_equal(lr, imresize(hr, 1 / 4))
    compressed = SecondOrderDegradation(4, DegradationOptions(bicubic_prob=1.0, jpeg_range=(40, 40)))
    lr, record = compressed(hr, np.random.default_rng(2))
    assert record["plain"]["jpeg"] == 40 and np.array_equal(lr, degrade.jpeg(imresize(hr, 1 / 4), 40))
    # bicubic_prob 0 draws nothing: the samples of Real-ESRGAN's keys alone
    a, rec_a = SecondOrderDegradation(2)(hr, np.random.default_rng(9))
    b, rec_b = SecondOrderDegradation(2, DegradationOptions(bicubic_prob=0.0, bicubic_jpeg_prob=0.3))(
        hr, np.random.default_rng(9))
    assert a.tobytes() == b.tobytes() and rec_a == rec_b
    # a share of each
    mixed = SecondOrderDegradation(2, DegradationOptions(bicubic_prob=0.5))
    kinds = ["plain" in mixed(hr, np.random.default_rng(i))[1] for i in range(40)]
    assert 8 <= sum(kinds) <= 32


def test_image_rng_depends_on_seed_and_name_only():
    # Pinned: a test set made with seed 0 must stay reproducible across versions.
    assert image_rng(0, "baby").integers(0, 2**32, 3).tolist() == [1594430193, 1071602121, 2078736157]
    assert image_rng(7, "bird").integers(0, 2**32, 3).tolist() == [193187899, 1797607442, 1530242890]
    assert image_rng(0, "baby").random() == image_rng(0, "baby").random()
    assert image_rng(0, "baby").random() != image_rng(1, "baby").random()
    assert image_rng(0, "baby").random() != image_rng(0, "bird").random()
    for bad in (-1, 1.5, True, "0"):
        with pytest.raises(DegradationError, match="seed"):
            image_rng(bad, "baby")


# ----------------------------------------------------------------------------------------- kernels
@pytest.mark.parametrize("kind", KERNEL_TYPES)
@pytest.mark.parametrize("size", [7, 13, 21])
def test_mixed_kernel_shape_sum_and_parameters(kind, size):
    rng = np.random.default_rng(10 * size + KERNEL_TYPES.index(kind))
    kernel, params = mixed_kernel(rng, size, (kind,), (1.0,), (0.2, 3.0), (0.5, 4.0), (1.0, 2.0))
    assert kernel.shape == (size, size) and kernel.dtype == np.float32
    assert abs(float(kernel.sum(dtype=np.float64)) - 1) < 1e-6 and kernel.min() >= 0
    assert params["type"] == kind and params["size"] == size
    assert 0.2 <= params["sigma_x"] <= 3.0 and 0.2 <= params["sigma_y"] <= 3.0
    assert ("beta" in params) == kind.startswith(("generalized", "plateau"))
    if "beta" in params:
        low, high = (0.5, 4.0) if kind.startswith("generalized") else (1.0, 2.0)
        assert low <= params["beta"] <= high
    # the peak is at the centre and the kernel is point-symmetric (a rotated, centred shape)
    assert np.unravel_index(np.argmax(kernel), kernel.shape) == (size // 2, size // 2)
    np.testing.assert_allclose(kernel, kernel[::-1, ::-1], atol=1e-7)
    if kind.endswith("iso") and not kind.endswith("aniso"):
        assert params["sigma_x"] == params["sigma_y"] and params["theta"] == 0.0
        np.testing.assert_allclose(kernel, kernel.T, atol=1e-7)


def test_iso_kernel_is_the_normalised_gaussian():
    kernel, params = mixed_kernel(np.random.default_rng(0), 9, ("iso",), (1.0,), (1.0, 2.0), (0.5, 4), (1, 2))
    ax = np.arange(-4, 5)
    g = np.exp(-(ax[None, :] ** 2 + ax[:, None] ** 2) / (2 * params["sigma_x"] ** 2))
    np.testing.assert_allclose(kernel, g / g.sum(), atol=1e-7)


@pytest.mark.parametrize("size", [7, 13, 21])
@pytest.mark.parametrize("cutoff", [math.pi / 5, math.pi / 2, math.pi])
def test_sinc_kernel_shape_sum_and_symmetry(size, cutoff):
    kernel = circular_lowpass_kernel(cutoff, size)
    assert kernel.shape == (size, size) and kernel.dtype == np.float32
    assert abs(float(kernel.sum(dtype=np.float64)) - 1) < 1e-6
    assert np.isfinite(kernel).all()
    np.testing.assert_allclose(kernel, kernel.T, atol=1e-7)
    np.testing.assert_allclose(kernel, kernel[::-1, :], atol=1e-7)


def test_blur_kernel_sizes_are_odd_and_within_the_option():
    o = DegradationOptions(blur_kernel_size=11, sinc_prob=0.5)
    sizes = set()
    for seed in range(40):
        kernel, params = degrade._blur_kernel(np.random.default_rng(seed), o, "")
        assert kernel.shape == (params["size"],) * 2 and abs(float(kernel.sum(dtype=np.float64)) - 1) < 1e-6
        sizes.add(params["size"])
    assert sizes == {7, 9, 11}


# ----------------------------------------------------------------------------------------- filtering
def _reference_filter(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Correlation with reflect101 borders, in float64, the slow obvious way."""
    p = kernel.shape[0] // 2
    padded = np.pad(img.astype(np.float64), ((p, p), (p, p), (0, 0)), mode="reflect")  # reflect == reflect101
    windows = sliding_window_view(padded, kernel.shape, axis=(0, 1))  # (H, W, C, k, k)
    return np.einsum("hwcij,ij->hwc", windows, kernel.astype(np.float64))


def _aniso(size: int) -> np.ndarray:
    d2 = degrade._mahalanobis(size, 2.5, 0.8, 0.6)
    k = np.exp(-0.5 * d2)
    return (k / k.sum()).astype(np.float32)


@pytest.mark.parametrize("kernel", [
    pytest.param(mixed_kernel(np.random.default_rng(0), 21, ("iso",), (1.0,), (2.0, 3.0), (1, 1), (1, 1))[0],
                 id="separable-21"),
    pytest.param(_aniso(7), id="direct-7"),
    pytest.param(_aniso(9), id="direct-9"),
    pytest.param(_aniso(15), id="fft-15"),
    pytest.param(circular_lowpass_kernel(math.pi / 4, 21), id="fft-sinc-21"),
])
def test_filter_paths_agree_with_the_reference(kernel):
    img = _image(40, 33).astype(np.float32) / 255
    out = degrade._filter(img, kernel)
    assert out.shape == img.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, _reference_filter(img, kernel), atol=1e-6, rtol=0)


def test_filter_path_choice():
    """The kernels above do take the three paths (else the test above would compare one path thrice)."""
    sep = mixed_kernel(np.random.default_rng(0), 21, ("iso",), (1.0,), (2.0, 3.0), (1, 1), (1, 1))[0]
    sv = np.linalg.svd(sep.astype(np.float64), compute_uv=False)
    assert sv[1] <= 1e-7 * sv[0]
    sv = np.linalg.svd(_aniso(15).astype(np.float64), compute_uv=False)
    assert sv[1] > 1e-7 * sv[0]


# ----------------------------------------------------------------------------------------- presets
@pytest.mark.parametrize("name", [*PRESETS, "jpeg10"])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_every_preset_gives_a_scale_th_of_the_hr(name, scale):
    hr = _image(37, 43)
    d = preset(name, scale)
    assert d.scale == scale
    lr, record = d(hr, np.random.default_rng(0))
    assert lr.dtype == np.uint8 and lr.shape == (37 // scale, 43 // scale, 3)
    json.dumps(record, allow_nan=False)
    hr_c, lr2, _ = degrade_image(d, hr, np.random.default_rng(0))
    assert hr_c.shape == (37 - 37 % scale, 43 - 43 % scale, 3)
    assert np.array_equal(hr_c, hr[: hr_c.shape[0], : hr_c.shape[1]])
    assert np.array_equal(lr2, d(hr_c, np.random.default_rng(0))[0])  # the LR of the cropped HR


@pytest.mark.parametrize("bad", ["jpeg0", "jpeg101", "jpeg", "JPEG50", "bicubic", ""])
def test_unknown_preset_is_named(bad):
    with pytest.raises(DegradationError, match=f"unknown degradation preset {bad!r}"):
        preset(bad, 4)


def test_jpeg_preset_is_pillow_jpeg_of_the_bicubic_lr():
    hr = _image(48, 40)
    clean, rec_clean = preset("clean", 2)(hr, None)
    assert np.array_equal(clean, imresize(hr, 0.5)) and rec_clean == {"resize": "matlab_bicubic", "jpeg": None}
    lr, record = preset("jpeg50", 2)(hr, None)
    assert record == {"resize": "matlab_bicubic", "jpeg": 50}
    buf = io.BytesIO()
    Image.fromarray(clean).save(buf, format="JPEG", quality=50)
    expected = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    assert np.array_equal(lr, expected)
    assert not np.array_equal(lr, clean)
    assert not np.array_equal(preset("jpeg30", 2)(hr, None)[0], lr)


def test_bicubic_refuses_bad_quality_and_scale():
    for q in (0, 101, 50.0, True):
        with pytest.raises(DegradationError, match="JPEG quality"):
            BicubicDegradation(2, q)
    for s in (0, 17, 2.0, True):
        with pytest.raises(DegradationError, match="scale"):
            SecondOrderDegradation(s)


def test_clean_preset_reproduces_the_benchmark_lr_files(datasets_dir):
    for name in ("baby", "bird"):
        hr = np.asarray(Image.open(datasets_dir / "Set5" / "HR" / f"{name}.png").convert("RGB"))
        hr_c, lr, _ = degrade_image(preset("clean", 4), hr, image_rng(0, name))
        expected = np.asarray(Image.open(datasets_dir / "Set5" / "LR_bicubic" / "X4" / f"{name}x4.png"))
        assert np.array_equal(lr, expected)


# ----------------------------------------------------------------------------------------- degrade_image
def test_gray_hr_gives_gray_lr_and_equals_the_rgb_of_equal_channels():
    gray = _image(30, 34)[:, :, 0]
    for d in (preset("clean", 2), preset("jpeg50", 2), SecondOrderDegradation(2)):
        hr, lr, record = degrade_image(d, gray, image_rng(5, "g"))
        assert hr.shape == (30, 34) and lr.shape == (15, 17) and lr.dtype == np.uint8
        _, lr_rgb, record_rgb = degrade_image(d, np.repeat(gray[:, :, None], 3, axis=2), image_rng(5, "g"))
        assert record == record_rgb
        expected = np.clip(np.rint(lr_rgb.astype(np.float32).mean(axis=2)), 0, 255).astype(np.uint8)
        assert np.array_equal(lr, expected)
    assert np.array_equal(degrade_image(preset("clean", 2), gray, None)[1], imresize(gray[:30, :34], 0.5))
    hr1, lr1, _ = degrade_image(preset("clean", 2), gray[:, :, None], None)
    assert hr1.shape == (30, 34) and lr1.shape == (15, 17)


def test_degrade_image_refuses_bad_images():
    d = preset("clean", 4)
    for bad, what in ((np.zeros((8, 8, 3), np.float32), "uint8"), (np.zeros((8, 8, 4), np.uint8), "uint8"),
                      (np.zeros((3, 8, 3), np.uint8), "smaller than the scale 4")):
        with pytest.raises(DegradationError, match=what):
            degrade_image(d, bad, None)


def test_describe():
    assert describe(preset("jpeg75", 3)) == ("bicubic", {"resize": "matlab_bicubic", "jpeg": 75})
    assert describe(preset("clean", 3)) == ("bicubic", {"resize": "matlab_bicubic", "jpeg": None})
    o = DegradationOptions(jpeg_range=(60, 90))
    kind, params = describe(SecondOrderDegradation(4, o))
    assert kind == "second_order" and DegradationOptions.from_mapping(params) == o


def test_to_jsonable():
    value = {"a": np.float32(0.5), 3: (np.int64(2), np.array([[1, 2]], np.uint8)), "b": [np.bool_(True), None]}
    out = to_jsonable(value)
    assert out == {"a": 0.5, "3": [2, [[1, 2]]], "b": [True, None]}
    json.dumps(out, allow_nan=False)


# ----------------------------------------------------------------------------------------- options
def test_options_round_trip_through_a_mapping():
    for o in (DegradationOptions(), DegradationOptions(kernel_list=("iso",), kernel_prob=(1.0,), jpeg_range=(50, 50),
                                                       noise_range2=(0.0, 5.0))):
        data = o.to_dict()
        assert all(not isinstance(v, tuple) for v in data.values())
        assert DegradationOptions.from_mapping(json.loads(json.dumps(data))) == o
        assert DegradationOptions.from_mapping(yaml.safe_load(yaml.safe_dump(data))) == o


def test_option_problems_are_listed_together_with_their_keys():
    with pytest.raises(DegradationError) as info:
        DegradationOptions.from_mapping({
            "blur_sigma": [3.0, 1.0], "jpeg_range": [0, 50], "kernel_list": ["iso", "box"], "colour": 1,
            "sinc_prob": 1.5, "resize_range": [1.2, 1.5], "noise_range": "wide",
        })
    problems = info.value.problems
    keys = sorted(p.split(":")[0] for p in problems)
    assert keys == ["blur_sigma", "colour", "jpeg_range", "kernel_list", "noise_range", "resize_range", "sinc_prob"]
    text = str(info.value)
    assert text.startswith("invalid degradation options:") and all(k in text for k in keys)
    assert "colour: unknown degradation key" in problems
    # the structural checks run once the fields are well-formed, again all at once
    with pytest.raises(DegradationError) as info:
        DegradationOptions(blur_kernel_size=20, kernel_list=("iso", "aniso"), kernel_prob=(1.0,),
                           resize_prob2=(0.0, 0.0, 0.0))
    assert sorted(p.split(":")[0] for p in info.value.problems) == ["blur_kernel_size", "kernel_prob",
                                                                    "resize_prob2"]


def test_from_mapping_refuses_a_non_mapping():
    with pytest.raises(DegradationError, match="must be a mapping"):
        DegradationOptions.from_mapping([("jpeg_range", [30, 95])])


# ----------------------------------------------------------------------------------------- option files
def test_option_file_keys_are_gathered_from_three_places():
    data = {"scale": 4, "jpeg_range": [40, 90], "degradation": {"noise_range": [0, 5], "sf": 4},
            "datasets": {"train": {"type": "RealESRGANDataset", "blur_sigma": [0.3, 2.0], "gt_size": 64}}}
    values, where, problems = gather_degradation_keys(data)
    assert problems == []
    assert values == {"jpeg_range": [40, 90], "noise_range": [0, 5], "blur_sigma": [0.3, 2.0]}
    assert where == {"jpeg_range": "jpeg_range", "noise_range": "degradation.noise_range",
                     "blur_sigma": "datasets.train.blur_sigma"}
    o = degradation_from_option_file(data, scale=4)
    assert o == DegradationOptions(jpeg_range=(40, 90), noise_range=(0, 5), blur_sigma=(0.3, 2.0))


def test_option_file_problems_name_their_key_paths():
    data = {"jpeg_range": [40, 90], "degradation": {"jpeg_range": [50, 60], "colour": 1, "sf": 2,
                                                    "resize_back": True},
            "datasets": {"train": {"type": "RealESRGANDataset", "blur_sigma": [3, 1]}}}
    with pytest.raises(DegradationError) as info:
        degradation_from_option_file(data, scale=4)
    problems = info.value.problems
    assert "degradation.jpeg_range: given twice (also as jpeg_range)" in problems
    assert "degradation.colour: unknown degradation key" in problems
    assert any(p.startswith("degradation.sf: must equal the scale (4)") for p in problems)
    assert any(p.startswith("degradation.resize_back:") for p in problems)
    assert any(p.startswith("datasets.train.blur_sigma: the low end exceeds the high end") for p in problems)
    assert len(problems) == 5


def test_bicubic_training_file_is_refused():
    data = {"scale": 2, "datasets": {"train": {"type": "PairedImageDataset"}}}
    with pytest.raises(DegradationError, match="datasets.train.type.*PairedImageDataset"):
        degradation_from_option_file(data)
    assert degradation_from_option_file({"datasets": {"train": {"type": "RealESRGANDataset"}}}) == DegradationOptions()


def test_the_recipe_file_gives_what_training_reads():
    from ribsr.train.options import load_options

    assert load_degradation_options(REPO_RECIPE, 4) == load_options(REPO_RECIPE).degradation


def test_load_degradation_options_plain_mapping_json_and_errors(tmp_path):
    plain = tmp_path / "plain.yml"
    plain.write_text("jpeg_range: [50, 70]\nsecond_order_prob: 0\n")
    assert load_degradation_options(plain) == DegradationOptions(jpeg_range=(50, 70), second_order_prob=0)
    as_json = tmp_path / "opts.json"
    as_json.write_text(json.dumps(DegradationOptions(noise_range=(0.0, 2.0)).to_dict()))
    assert load_degradation_options(as_json) == DegradationOptions(noise_range=(0.0, 2.0))

    bad = tmp_path / "bad.yml"
    bad.write_text("jpeg_range: [0, 50]\nblur_sigma: [2, 1]\nwhatever: 3\n")
    with pytest.raises(DegradationError) as info:
        load_degradation_options(bad)
    assert len(info.value.problems) == 3
    assert all(p.startswith(f"{bad}: ") for p in info.value.problems)
    assert {p.split(": ")[1] for p in info.value.problems} == {"jpeg_range", "blur_sigma", "whatever"}

    broken = tmp_path / "broken.yml"
    broken.write_text("jpeg_range: [50, 70\n")
    with pytest.raises(DegradationError, match=f"{broken}: not valid YAML"):
        load_degradation_options(broken)
    listed = tmp_path / "list.yml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(DegradationError, match=f"{listed}: must hold a mapping"):
        load_degradation_options(listed)
    with pytest.raises(FileNotFoundError, match="missing.yml"):
        load_degradation_options(tmp_path / "missing.yml")
    with pytest.raises(DegradationError, match="not a regular file"):
        load_degradation_options(tmp_path)


def test_load_degradation_options_refuses_an_alias_bomb_and_binary_files(tmp_path):
    # a billion-laughs document must be refused before its values are built (it hung yaml.safe_load)
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x","x"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    bomb = tmp_path / "bomb.yml"
    bomb.write_text("\n".join(lines) + "\n")
    with pytest.raises(DegradationError, match=f"{bomb}: "):
        load_degradation_options(bomb)
    binary = tmp_path / "weights.yml"
    binary.write_bytes(b"\x80\x02\x00binary")
    with pytest.raises(DegradationError, match="not UTF-8 text"):
        load_degradation_options(binary)
