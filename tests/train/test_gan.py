"""The GAN stage (Real-ESRGAN's U-Net discriminator, adversarial and perceptual losses) and training on
Real-ESRGAN-style degraded crops, on images generated in the test: both networks learn, checkpoints hold the
discriminator, resume is bit-identical, and mismatched runs are refused."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ribsr.model.discriminator import UNetDiscriminatorSN, convert_state_dict
from ribsr.train.loop import Trainer
from ribsr.train.losses import GANLoss, PerceptualLoss, VGGFeatureExtractor, VGGWeightsError, vgg_layer_names
from ribsr.train.options import OptionsError, options_from_dict
from ribsr.train.state import ResumeError, list_checkpoints, load_checkpoint

TINY_NET = dict(
    type="SST", dim=8, window_sizes=[4, 8], num_heads=[2, 2], ranks=[2, 2], n_blocks=1, exp_ratio=2,
    rib_hidden_dim=8, rib_n_freqs=2, upscaling_factor=2, upsampler_type="pixelshuffle_direct", gate_type="DWC",
)


def make_images(folder: Path, n: int = 4, size: int = 64) -> Path:
    """``n`` smooth random RGB images (PNG) of ``size`` x ``size``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        small = rng.uniform(0, 255, (size // 8, size // 8, 3)).astype(np.float32)
        img = np.asarray(Image.fromarray(small.astype(np.uint8)).resize((size, size), Image.BICUBIC))
        Image.fromarray(img).save(folder / f"img{i}.png")
    return folder


def gan_options(data: Path, **train_overrides) -> dict:
    opts = {
        "name": "tiny_gan_x2",
        "scale": 2,
        "manual_seed": 3,
        "network_g": dict(TINY_NET),
        "network_d": {"type": "UNetDiscriminatorSN", "num_in_ch": 3, "num_feat": 4, "skip_connection": True},
        "degradation": {"blur_kernel_size": 7, "blur_kernel_size2": 7, "noise_range": [0, 5],
                        "noise_range2": [0, 5], "jpeg_range": [60, 95], "jpeg_range2": [60, 95]},
        "gt_usm": True,
        "datasets": {"train": {
            "name": "generated", "type": "RealESRGANDataset", "dataroot_gt": str(data),
            "io_backend": {"type": "memory"}, "gt_size": 32, "use_hflip": True, "use_rot": True,
            "batch_size_per_gpu": 2, "num_worker_per_gpu": 0,
        }},
        "train": {
            "ema_decay": 0.9,
            "optim_g": {"type": "Adam", "lr": 1e-3, "betas": [0.9, 0.99]},
            "optim_d": {"type": "Adam", "lr": 1e-3, "betas": [0.9, 0.99]},
            "scheduler": {"type": "MultiStepLR", "milestones": [100], "gamma": 0.5},
            "total_iter": 6,
            "warmup_iter": -1,
            "pixel_opt": {"type": "L1Loss", "loss_weight": 1.0, "reduction": "mean"},
            "gan_opt": {"type": "GANLoss", "gan_type": "vanilla", "loss_weight": 0.1},
            "net_d_iters": 1,
            "net_d_init_iters": 0,
        },
        "logger": {"print_freq": 1, "save_checkpoint_freq": 2, "use_tb_logger": False},
    }
    opts["train"].update(train_overrides)
    return opts


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def fit(opts: dict, run_dir: Path, resume=None) -> Trainer:
    trainer = Trainer(options_from_dict(opts), run_dir, resume=resume, progress=False)
    trainer.fit()
    return trainer


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_images(tmp_path / "hr")


def test_discriminator_learns_alone_first_then_both(data, tmp_path, one_thread):
    opts = gan_options(data, total_iter=4, net_d_init_iters=2)
    start = Trainer(options_from_dict(opts), tmp_path / "unused", progress=False)
    g0 = copy.deepcopy(start.model.state_dict())
    d0 = copy.deepcopy(start.disc.state_dict())
    opts["logger"]["save_checkpoint_freq"] = 1
    trainer = fit(opts, tmp_path / "run")
    at2 = load_checkpoint(dict(list_checkpoints(tmp_path / "run"))[2])
    assert states_equal(at2["model"], g0)  # iterations 1 and 2: only the discriminator learns
    assert not states_equal(at2["net_d"], d0)
    assert not states_equal(trainer.model.state_dict(), g0)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [m for m in metrics if "loss" in m]
    assert [m["loss"] for m in losses[:2]] == [0.0, 0.0]
    last = losses[-1]
    assert {"l_pix", "l_gan", "l_d_real", "l_d_fake", "out_d_real", "out_d_fake"} <= last.keys()
    assert last["loss"] == pytest.approx(last["l_pix"] + last["l_gan"], rel=1e-5)
    state = load_checkpoint(dict(list_checkpoints(tmp_path / "run"))[4])
    assert {"net_d", "optimizer_d", "scheduler_d", "config_d"} <= state.keys()
    assert state["config_d"] == {"type": "UNetDiscriminatorSN", "num_in_ch": 3, "num_feat": 4,
                                 "skip_connection": True}


def test_gan_resume_is_bit_identical(data, tmp_path, one_thread):
    full = fit(gan_options(data, total_iter=6), tmp_path / "full")
    fit(gan_options(data, total_iter=4), tmp_path / "split")
    resumed = fit(gan_options(data, total_iter=6), tmp_path / "split", resume="auto")
    assert resumed.iteration == 6
    assert states_equal(full.model.state_dict(), resumed.model.state_dict())
    assert states_equal(full.ema.state_dict(), resumed.ema.state_dict())
    assert states_equal(full.disc.state_dict(), resumed.disc.state_dict())
    assert full.weights_digest() == resumed.weights_digest()


def test_resume_refuses_a_run_with_or_without_a_discriminator(data, tmp_path, one_thread):
    plain = gan_options(data, total_iter=2)
    del plain["network_d"]
    for key in ("optim_d", "gan_opt", "net_d_iters", "net_d_init_iters"):
        del plain["train"][key]
    fit(plain, tmp_path / "plain")
    with pytest.raises(ResumeError, match="holds no discriminator"):
        Trainer(options_from_dict(gan_options(data, total_iter=4)), tmp_path / "plain", resume="auto", progress=False)
    fit(gan_options(data, total_iter=2), tmp_path / "gan")
    with pytest.raises(ResumeError, match="holds a discriminator"):
        Trainer(options_from_dict(dict(plain, train={**plain["train"], "total_iter": 4})), tmp_path / "gan",
                resume="auto", progress=False)
    other = gan_options(data, total_iter=4)
    other["network_d"]["num_feat"] = 8
    with pytest.raises(ResumeError, match="another discriminator"):
        Trainer(options_from_dict(other), tmp_path / "gan", resume="auto", progress=False)


def vgg_weights(path: Path) -> Path:
    """A torchvision-layout file with the first two VGG19 convolutions (random; enough for conv1_2)."""
    torch.manual_seed(0)
    torch.save({"features.0.weight": torch.randn(64, 3, 3, 3) * 0.1, "features.0.bias": torch.zeros(64),
                "features.2.weight": torch.randn(64, 64, 3, 3) * 0.05, "features.2.bias": torch.zeros(64),
                "classifier.0.weight": torch.zeros(2, 2)}, path)
    return path


def test_perceptual_loss_from_user_weights_is_trained_and_logged(data, tmp_path, one_thread):
    opts = gan_options(data, total_iter=2)
    opts["train"]["perceptual_opt"] = {"type": "PerceptualLoss", "layer_weights": {"conv1_2": 1.0},
                                       "vgg_type": "vgg19", "perceptual_weight": 0.5, "style_weight": 0.1,
                                       "weights": str(vgg_weights(tmp_path / "vgg.pth"))}
    fit(opts, tmp_path / "run")
    last = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["l_percep"] > 0 and last["l_style"] > 0
    assert last["loss"] == pytest.approx(last["l_pix"] + last["l_percep"] + last["l_style"] + last["l_gan"], rel=1e-5)


def test_perceptual_loss_needs_weights_and_known_layers(data):
    opts = gan_options(data)
    opts["train"]["perceptual_opt"] = {"type": "PerceptualLoss", "layer_weights": {"conv9_9": 1.0}}
    with pytest.raises(OptionsError) as info:
        options_from_dict(opts)
    text = str(info.value)
    assert "train.perceptual_opt.weights" in text and "ships none" in text
    assert "train.perceptual_opt.layer_weights.conv9_9: not a layer of vgg19" in text


def test_gan_keys_go_together_and_every_problem_is_reported(data):
    opts = gan_options(data)
    del opts["train"]["optim_d"], opts["train"]["gan_opt"]
    opts["datasets"]["train"]["gt_size"] = 36
    with pytest.raises(OptionsError) as info:
        options_from_dict(opts)
    text = str(info.value)
    assert "train.optim_d: missing" in text and "train.gan_opt: missing" in text
    assert "datasets.train.gt_size: must be a multiple of 8 for network_d" in text
    lone = gan_options(data)
    del lone["network_d"]
    with pytest.raises(OptionsError) as info:
        options_from_dict(lone)
    assert "train.gan_opt: needs network_d" in str(info.value) and "train.optim_d: needs network_d" in str(info.value)


def test_vgg_weights_that_do_not_fit_are_named(tmp_path):
    path = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(32, 3, 3, 3), "features.0.bias": torch.zeros(32)}, path)
    vgg = VGGFeatureExtractor(["conv1_2"], "vgg19")
    with pytest.raises(VGGWeightsError, match=r"features.0.weight has shape \(32, 3, 3, 3\).*missing features.2"):
        vgg.load_weights(path)
    with pytest.raises(VGGWeightsError, match="no such file"):
        vgg.load_weights(tmp_path / "none.pth")


def test_vgg_layers_and_perceptual_values():
    assert vgg_layer_names("vgg19")[:5] == ["conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1"]
    assert len(vgg_layer_names("vgg19")) == 37  # torchvision's vgg19.features has 37 modules
    vgg = VGGFeatureExtractor(["conv1_1"], "vgg19", use_input_norm=False)
    torch.manual_seed(1)
    w, b = torch.randn(64, 3, 3, 3), torch.randn(64)
    vgg.load_features({"features.0.weight": w, "features.0.bias": b})
    x, y = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    loss = PerceptualLoss(vgg, {"conv1_1": 2.0}, perceptual_weight=0.5)
    percep, style = loss(x, y)
    expected = 0.5 * 2.0 * F.l1_loss(F.conv2d(x, w, b, padding=1), F.conv2d(y, w, b, padding=1))
    assert style is None and torch.allclose(percep, expected, rtol=1e-5)
    assert all(not p.requires_grad for p in vgg.parameters()) and not vgg.train().training


def test_gan_losses_match_their_formulas():
    x = torch.tensor([-2.0, 0.5, 3.0])
    assert torch.allclose(GANLoss("vanilla")(x, True, is_disc=True), F.softplus(-x).mean())
    assert torch.allclose(GANLoss("vanilla")(x, False, is_disc=True), F.softplus(x).mean())
    assert torch.allclose(GANLoss("vanilla", loss_weight=0.1)(x, True), 0.1 * F.softplus(-x).mean())
    assert torch.allclose(GANLoss("lsgan")(x, True, is_disc=True), ((x - 1) ** 2).mean())
    assert torch.allclose(GANLoss("wgan")(x, True, is_disc=True), -x.mean())
    assert torch.allclose(GANLoss("wgan_softplus")(x, False, is_disc=True), F.softplus(x).mean())
    assert torch.allclose(GANLoss("hinge")(x, True, is_disc=True), F.relu(1 - x).mean())
    assert torch.allclose(GANLoss("hinge")(x, False, is_disc=True), F.relu(1 + x).mean())
    assert torch.allclose(GANLoss("hinge", loss_weight=2.0)(x, True), -2.0 * x.mean())
    with pytest.raises(ValueError, match="'gan'"):
        GANLoss("gan")


def test_discriminator_shape_and_real_esrgan_keys():
    torch.manual_seed(0)
    disc = UNetDiscriminatorSN(3, 8).eval()
    x = torch.rand(2, 3, 32, 24)
    assert disc(x).shape == (2, 1, 32, 24)
    # Real-ESRGAN's net_d files use the hook-based spectral norm: weight_orig / weight_u / weight_v.
    old = UNetDiscriminatorSN(3, 8)
    for name in [f"conv{i}" for i in range(1, 9)]:
        conv = torch.nn.Conv2d(*_conv_shape(disc, name))
        conv.weight.data = getattr(disc, name).parametrizations.weight.original.detach().clone()
        conv = torch.nn.utils.spectral_norm(conv)
        conv.weight_u.data = getattr(disc, name).parametrizations.weight[0]._u.clone()
        conv.weight_v.data = getattr(disc, name).parametrizations.weight[0]._v.clone()
        setattr(old, name, conv)
    old.conv0.load_state_dict(disc.conv0.state_dict())
    old.conv9.load_state_dict(disc.conv9.state_dict())
    old_state = old.state_dict()
    assert "conv1.weight_orig" in old_state and "conv1.weight_u" in old_state
    assert set(convert_state_dict(old_state)) == set(disc.state_dict())
    again = UNetDiscriminatorSN(3, 8)
    again.load_state_dict(old_state)
    again.eval()
    old.eval()
    with torch.no_grad():
        assert torch.allclose(again(x), disc(x), atol=1e-6)
        assert torch.allclose(old(x), disc(x), atol=1e-5)


def _conv_shape(disc: UNetDiscriminatorSN, name: str) -> tuple:
    conv = getattr(disc, name)
    w = conv.parametrizations.weight.original
    return (w.shape[1], w.shape[0], w.shape[2], conv.stride[0], conv.padding[0], 1, 1, False)


def test_torchrun_two_processes_equal_one_process_with_gan_and_degradation(data, tmp_path):
    """Degraded crops made in each process and the GAN stage under DDP: the same weights as one process with the
    global batch."""
    import os
    import subprocess
    import sys

    import yaml

    import ribsr
    from ribsr.train.export import export_run

    opts = gan_options(data, total_iter=3)
    one = copy.deepcopy(opts)
    one["datasets"]["train"]["batch_size_per_gpu"] = 4
    opts["datasets"]["train"]["batch_size_per_gpu"] = 2
    (tmp_path / "two.yml").write_text(yaml.safe_dump(opts))
    (tmp_path / "one.yml").write_text(yaml.safe_dump(one))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "ribsr", "train", "two.yml", "--run-dir", "two", "--no-progress"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    single = subprocess.run([sys.executable, "-m", "ribsr", "train", "one.yml", "--run-dir", "one", "--no-progress"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    assert "identical on all 2 processes" in (tmp_path / "two" / "train.log").read_text()
    a = ribsr.load_model(export_run(tmp_path / "two")[0]).state_dict()
    b = ribsr.load_model(export_run(tmp_path / "one")[0]).state_dict()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 1e-4, worst
    da = load_checkpoint(list_checkpoints(tmp_path / "two")[-1][1])["net_d"]
    db = load_checkpoint(list_checkpoints(tmp_path / "one")[-1][1])["net_d"]
    worst_d = max((da[k].float() - db[k].float()).abs().max().item() for k in da)
    assert worst_d <= 1e-4, worst_d
