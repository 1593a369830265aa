"""ribsr train with ESC-RIB: the network_g of the paper's ESCRIB option files (type ESCRIB) parses to the published
preset, and a tiny ESC-RIB trains, resumes and exports through the same loop as SST."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

import ribsr
from ribsr.config import ESCRIBConfig, preset
from ribsr.model.esc import ESCRIB
from ribsr.train.export import export_run
from ribsr.train.loop import Trainer
from ribsr.train.options import OptionsError, options_from_dict

# network_g of the paper's options/test/ESCRIB_X{2,3,4}.yaml (upscaling_factor set per scale below).
ESCRIB_G = {
    "type": "ESCRIB", "dim": 64, "pdim": 16, "kernel_size": 13, "n_blocks": 5, "conv_blocks": 5, "window_size": 64,
    "num_heads": 4, "upscaling_factor": 2, "exp_ratio": 1.25, "attn_type": "RIB", "rank": 16, "rib_hidden_dim": 32,
    "rib_n_freqs": 10, "gate_type": "DWC",
}
TINY_G = {**preset("escrib-tiny").to_network_g(), "n_blocks": 1, "conv_blocks": 1}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Eight smooth random 64x64 RGB images (the HR set the tiny recipe crops from)."""
    root = tmp_path_factory.mktemp("escrib_data")
    rng = np.random.default_rng(5)
    for i in range(8):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((64, 64), Image.BICUBIC).save(root / f"hr{i}.png")
    return root


def _options(data_dir, network_g: dict, scale: int = 2, total_iter: int = 2) -> dict:
    """A tiny recipe: ``network_g`` on 32x32 HR crops made into LR on the fly, batch 2, no validation."""
    return {
        "name": "escrib_tiny", "scale": scale, "manual_seed": 3, "network_g": copy.deepcopy(network_g),
        "datasets": {"train": {
            "name": "toy", "type": "DownsampleImageDataset", "dataroot_gt": str(data_dir),
            "io_backend": {"type": "memory"}, "gt_size": 12 * scale, "use_hflip": True, "use_rot": True,
            "batch_size_per_gpu": 2, "num_worker_per_gpu": 0,
        }},
        "train": {
            "ema_decay": 0.9, "optim_g": {"type": "AdamW", "lr": 2e-3, "weight_decay": 0, "betas": [0.9, 0.99]},
            "scheduler": {"type": "MultiStepLR", "milestones": [100], "gamma": 0.5}, "total_iter": total_iter,
            "warmup_iter": 1, "pixel_opt": {"type": "L1Loss", "loss_weight": 1.0, "reduction": "mean"},
        },
        "logger": {"print_freq": 1, "save_checkpoint_freq": 2, "use_tb_logger": False},
    }


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_the_papers_network_g_parses_to_the_preset(tmp_path, scale):
    opts = options_from_dict(_options(tmp_path, {**ESCRIB_G, "upscaling_factor": scale}, scale=scale))
    assert isinstance(opts.network, ESCRIBConfig) and opts.network == preset("escrib", scale=scale)
    assert opts.to_dict()["network_g"]["type"] == "ESCRIB"
    assert options_from_dict(opts.to_dict()).network == opts.network  # the options written beside a run


def test_a_bad_network_g_lists_its_problems_and_the_types(tmp_path):
    with pytest.raises(OptionsError) as info:
        options_from_dict(_options(tmp_path, {**ESCRIB_G, "kernel_size": 12, "pdim": 80}))
    text = str(info.value)
    assert "network_g: kernel_size must be odd" in text and "network_g: pdim 80 exceeds dim 64" in text
    with pytest.raises(OptionsError, match="must be 'SST' or 'ESCRIB', got 'ESC'"):
        options_from_dict(_options(tmp_path, {**ESCRIB_G, "type": "ESC"}))


def test_a_tiny_escrib_trains_resumes_and_exports(data_dir, tmp_path, one_thread):
    opts = _options(data_dir, TINY_G, total_iter=2)
    trainer = Trainer(options_from_dict(opts), tmp_path / "run", progress=False)
    assert isinstance(trainer.model, ESCRIB)
    before = trainer.model.plk_filter.detach().clone()
    trainer.fit()
    assert not torch.equal(trainer.model.plk_filter, before)  # the shared kernel trains
    opts["train"]["total_iter"] = 4
    resumed = Trainer(options_from_dict(opts), tmp_path / "run", resume="auto", progress=False)
    assert resumed.iteration == 2
    resumed.fit()
    st, pth = export_run(tmp_path / "run")
    model = ribsr.load_model(st)
    assert isinstance(model, ESCRIB) and model.config == resumed.opts.network
    paper = torch.load(pth, weights_only=True)
    assert set(paper["params_ema"]) == set(model.state_dict())
    released = ribsr.load_model(pth, config=TINY_G)  # the .pth loads as a released ESC-RIB file
    with torch.no_grad():
        x = torch.rand(1, 3, 10, 10)
        assert torch.equal(released(x), model(x))
