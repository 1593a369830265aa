"""The option-file loader: the paper's BasicSR-style YAML, overrides, paths, and one report of every problem."""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path

import pytest
import yaml

from ribsr.config import preset
from ribsr.train.options import (
    DatasetOptions,
    Options,
    OptionsError,
    SchedulerOptions,
    apply_overrides,
    load_options,
    options_from_dict,
)

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
NETWORKS = ("light", "light+", "base", "base+", "large", "large+", "xl+")
LOGGER = "ribsr.train.options"


def light_dict() -> dict:
    """The light x2 option file as a plain dict (a fresh copy)."""
    return yaml.safe_load((HERE / "options" / "train_SST_light_x2.yml").read_text(encoding="utf-8"))


def parse(data: dict, **kwargs) -> Options:
    return options_from_dict(data, base_dir=kwargs.pop("base_dir", HERE), **kwargs)


def problems_of(data: dict, **kwargs) -> list[str]:
    with pytest.raises(OptionsError) as info:
        parse(data, **kwargs)
    return info.value.problems


def write(tmp_path: Path, data: object, name: str = "opts.yml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


# ---------------------------------------------------------------------- the paper's files
@pytest.mark.parametrize("net", NETWORKS)
def test_paper_option_files_parse_to_the_presets(net: str) -> None:
    opts = load_options(HERE / "options" / f"train_SST_{net}_x2.yml")
    expected = preset(net, 2)
    for f in dataclasses.fields(expected):
        if f.name != "name":
            assert getattr(opts.network, f.name) == getattr(expected, f.name), f.name
    assert opts.name == f"SST_{net}_x2" and opts.scale == 2 and opts.manual_seed == 0
    t = opts.train
    assert (t.optim_g.type, t.optim_g.lr, t.optim_g.weight_decay, t.optim_g.betas) == ("AdamW", 5e-4, 0.0, (0.9, 0.9))
    assert t.scheduler == SchedulerOptions(type="MultiStepLR", milestones=(250000, 400000, 450000, 475000, 490000),
                                           gamma=0.5)
    assert (t.total_iter, t.warmup_iter, t.ema_decay) == (500000, 20000, 0.999)
    assert (t.pixel_opt.type, t.pixel_opt.loss_weight, t.pixel_opt.reduction) == ("L1Loss", 1.0, "mean")
    plus = net.endswith("+")
    assert opts.train_data.type == ("DownsampleImageDataset" if plus else "PairedImageDataset")
    assert opts.train_data.gt_size == (192 if plus else 128)
    assert opts.train_data.batch_size_per_gpu == (16 if net.startswith("light") else 8)
    assert opts.train_data.use_hflip and opts.train_data.use_rot
    assert list(opts.val_data) == ["val_1"] and opts.val_data["val_1"].name == "Set5"
    assert opts.val is not None and opts.val.val_freq == 5000
    assert {k: (m.type, m.crop_border, m.test_y_channel) for k, m in opts.val.metrics.items()} == {
        "psnr": ("calculate_psnr", 2, True), "ssim": ("calculate_ssim", 2, True)}
    assert opts.logger.save_checkpoint_freq == 5000 and opts.logger.use_tb_logger
    assert opts.path.pretrain_network_g is None and opts.path.strict_load_g


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "paper").glob("*.yml")), ids=lambda p: p.name)
def test_shipped_paper_recipes_parse(path: Path) -> None:
    opts = load_options(path)
    kind, net, scale = path.stem.split("_")[0], path.stem.split("_")[2], int(path.stem[-1])
    assert opts.name == f"SST_{net}_x{scale}" and opts.scale == scale
    assert opts.network == preset(net, scale)
    assert opts.train_data.dataroot_gt.is_relative_to(REPO / "datasets")
    assert opts.train_data.gt_size % scale == 0
    for m in opts.val.metrics.values():
        assert m.crop_border == scale
    if kind == "finetune":
        assert (opts.train.optim_g.lr, opts.train.total_iter) == (2.5e-4, 250000)
        assert opts.train.scheduler.milestones == (125000, 200000, 225000, 240000)
        assert opts.path.pretrain_network_g == REPO / "runs" / f"SST_{net}_x2" / "export" / f"SST_{net}_x2.pth"
        if scale == 3:
            assert opts.train_data.gt_size == 288
        assert any(p.startswith("path.pretrain_network_g: not found") for p in opts.missing_files())
    else:
        assert kind == "train" and scale == 2 and opts.path.pretrain_network_g is None
    assert options_from_dict(opts.raw) == opts


BICUBIC_RECIPES = sorted(p for p in (REPO / "configs" / "local").glob("*.yml") if "_real_" not in p.name)


@pytest.mark.parametrize("path", BICUBIC_RECIPES, ids=lambda p: p.name)
def test_shipped_cpu_recipes_parse_and_find_their_data(path: Path) -> None:
    opts = load_options(path)
    scale = int(path.stem[-1])
    # train_SST_small_x2.yml -> SST_small_x2, finetune_SST_small_x4.yml -> SST_small_x4, train_ESCRIB_small_x2.yml ...
    assert opts.name == path.stem.split("_", 1)[1] and opts.scale == opts.network.scale == scale
    shared_datasets = (REPO.parent / "shared" / "datasets").resolve()  # the recipes' default data root
    assert opts.train_data.dataroot_gt.resolve() == shared_datasets
    assert opts.train_data.gt_size == 48 * scale
    assert [d.name for d in opts.val_data.values()] == ["Set5", "Set14"]
    if shared_datasets.is_dir():
        assert opts.missing_files() == []
    if scale != 2:  # fine-tuned from the bundled x2 model
        assert opts.path.pretrain_network_g == REPO / "src" / "ribsr" / "assets" / "ribsr-default-x2.safetensors"


def test_shipped_real_world_recipe_parses_and_finds_its_data() -> None:
    """The real-world x4 recipe: fine-tuned from the bundled bicubic x4 model on degraded T91+BSD200 crops."""
    path = REPO / "configs" / "local" / "finetune_SST_small_real_x4.yml"
    opts = load_options(path)
    assert opts.name == "SST_small_real_x4" and opts.scale == opts.network.scale == 4
    assert opts.train_data.type == "RealESRGANDataset" and opts.train_data.gt_size == 192
    assert opts.degradation is not None and opts.degradation.problems() == []
    assert opts.degradation.jpeg_range == (30, 95) and opts.degradation.second_order_prob == 0.3
    assert (opts.degradation.bicubic_prob, opts.degradation.bicubic_jpeg_prob) == (0.7, 0.55)
    assert not opts.usm.gt_usm
    assert [d.name for d in opts.val_data.values()] == ["Set5", "Set14_degraded"]
    assert opts.path.pretrain_network_g == REPO / "src" / "ribsr" / "assets" / "ribsr-default-x4.safetensors"
    assert opts.network == load_options(REPO / "configs" / "local" / "finetune_SST_small_x4.yml").network
    if (REPO.parent / "shared" / "datasets").is_dir():
        assert opts.missing_files() == []
    assert options_from_dict(opts.raw, base_dir=path.parent) == opts


def test_real_world_stage2_recipe_differs_from_stage1_only_where_documented() -> None:
    """Stage 2 trains on from stage 1's exported EMA weights: another seed and a lower peak lr, all else equal."""
    local = REPO / "configs" / "local"
    one = load_options(local / "finetune_SST_small_real_x4.yml")
    two = load_options(local / "finetune_SST_small_real_x4_stage2.yml")
    assert two.name == "SST_small_real_x4_stage2" and two.manual_seed == 1 and one.manual_seed == 0
    assert two.path.pretrain_network_g == REPO / "runs" / "real_x4_stage1.safetensors"
    assert (one.train.optim_g.lr, two.train.optim_g.lr) == (3e-4, 2e-4)
    assert two.network == one.network and two.degradation == one.degradation
    assert two.train_data == one.train_data and two.val_data == one.val_data
    assert two.train.total_iter == one.train.total_iter == 3000


def test_escrib_comparison_recipe_is_the_x2_recipe_with_another_network() -> None:
    """docs/models.md's per-CPU-second comparison: ESC-RIB of about the bundled x2 SST's size, the same recipe."""
    from ribsr.build import build_network
    from ribsr.config import ESCRIBConfig

    local = REPO / "configs" / "local"
    sst = load_options(local / "train_SST_small_x2.yml")
    esc = load_options(local / "train_ESCRIB_small_x2.yml")
    assert isinstance(esc.network, ESCRIBConfig) and esc.network.scale == 2
    assert sum(p.numel() for p in build_network(esc.network).parameters()) == 74184
    assert (esc.train, esc.train_data, esc.val_data, esc.manual_seed) == (sst.train, sst.train_data, sst.val_data,
                                                                          sst.manual_seed)


def test_every_network_has_its_shipped_recipes() -> None:
    names = {p.name for p in (REPO / "configs" / "paper").glob("*.yml")}
    for net in NETWORKS:
        assert f"train_SST_{net}_x2.yml" in names
        assert {f"finetune_SST_{net}_x3.yml", f"finetune_SST_{net}_x4.yml"} <= names


# ---------------------------------------------------------------------- every problem at once
def test_every_problem_of_a_broken_file_is_reported_at_once(tmp_path: Path) -> None:
    data = light_dict()
    data["scale"] = 3  # != network_g.upscaling_factor; gt_size 128 is not a multiple of 3
    data["colour"] = "rgb"  # unknown top-level key
    data["network_g"]["dim"] = -4
    data["datasets"]["train"]["gt_size"] = 128
    del data["datasets"]["train"]["dataroot_lq"]  # PairedImageDataset needs it
    data["datasets"]["train"]["use_hflip"] = "yes please"
    data["train"]["optim_g"]["lr"] = -1
    data["train"]["ema_decay"] = 1.5
    data["train"]["scheduler"]["milestones"] = [400000, 250000]
    data["train"]["pixel_opt"]["type"] = "L3Loss"
    data["val"]["metrics"]["psnr"]["crop_border"] = "two"
    del data["logger"]["print_freq"]
    data["logger"]["print_frequency"] = 10
    path = write(tmp_path, data)
    with pytest.raises(OptionsError) as info:
        load_options(path)
    problems, message = info.value.problems, str(info.value)
    expected = [
        "colour: unknown key",
        "network_g: dim must be an integer in [1, 1024], got -4",
        "datasets.train.dataroot_lq: missing",
        "datasets.train.use_hflip: must be true or false, got 'yes please'",
        "train.optim_g.lr: must be a positive number, got -1",
        "train.ema_decay: must be a number >= 0 and < 1, got 1.5",
        "train.scheduler.milestones: must be increasing, got [400000, 250000]",
        "train.pixel_opt.type: must be one of ['L1Loss', 'MSELoss', 'CharbonnierLoss'], got 'L3Loss'",
        "val.metrics.psnr.crop_border: must be an integer, got 'two'",
        "logger.print_frequency: unknown key",
    ]
    for text in expected:
        assert any(p.startswith(text) for p in problems), (text, problems)
        assert text in message
    assert str(path) in message
    assert len(problems) >= len(expected)


def test_cross_checks(tmp_path: Path) -> None:
    data = light_dict()
    data["scale"] = 3
    data["network_g"]["upscaling_factor"] = 3
    problems = problems_of(data)
    assert "datasets.train.gt_size: must be a multiple of scale (3), got 128" in problems

    data = light_dict()
    data["scale"] = 4
    problems = problems_of(data)
    assert "scale: must equal network_g.upscaling_factor (2), got 4" in problems

    data = light_dict()
    data["network_g"]["type"] = "SwinIR"
    del data["datasets"]["train"]["gt_size"]
    data["train"]["warmup_iter"] = 500000
    problems = problems_of(data)
    assert "network_g.type: must be 'SST' or 'ESCRIB', got 'SwinIR'" in problems
    assert "datasets.train.gt_size: missing (the HR patch size of training crops)" in problems
    assert any(p.startswith("train.scheduler.milestones: must lie after warmup_iter (500000)") for p in problems)

    data = light_dict()
    data["train"]["scheduler"]["milestones"] = [10000, 600000]  # past total_iter is allowed (runs stopped early)
    assert problems_of(data) == ["train.scheduler.milestones: must lie after warmup_iter (20000), got [10000, 600000]"]


def test_validation_block_and_datasets_go_together() -> None:
    data = light_dict()
    del data["datasets"]["val_1"]
    assert problems_of(data) == ["val: validation is set up but datasets has no val_* dataset"]
    data = light_dict()
    del data["val"]
    assert problems_of(data) == ["datasets.val_1: a validation dataset is given but there is no val block "
                                 "(val_freq, metrics)"]
    data = light_dict()
    data["datasets"]["test_1"] = data["datasets"]["val_1"]
    assert problems_of(data) == ["datasets.test_1: unknown dataset key (use 'train', and 'val_1', 'val_2', ...)"]


def test_val_datasets_keep_file_order() -> None:
    data = light_dict()
    set14 = copy.deepcopy(data["datasets"]["val_1"])
    set14["name"] = "Set14"
    data["datasets"] = {"val_2": set14, "train": data["datasets"]["train"], "val_1": data["datasets"]["val_1"]}
    opts = parse(data)
    assert list(opts.val_data) == ["val_2", "val_1"] and opts.val_data["val_2"].name == "Set14"


def test_schedulers() -> None:
    data = light_dict()
    data["train"]["scheduler"] = {"type": "MultiStepRestartLR", "milestones": [250000], "gamma": 0.5,
                                  "restarts": [0], "restart_weights": [1]}
    s = parse(data).train.scheduler
    assert (s.type, s.milestones, s.restarts, s.restart_weights) == ("MultiStepLR", (250000,), (), ())

    data["train"]["scheduler"]["restarts"] = [250000]
    assert problems_of(data) == ["train.scheduler.restarts: restarts are not supported (only [] or [0]), "
                                 "got [250000]"]

    data["train"]["scheduler"] = {"type": "CosineAnnealingRestartLR", "periods": [240000, 240000],
                                  "restart_weights": [1, 1], "eta_min": "1e-7"}
    s = parse(data).train.scheduler
    assert (s.periods, s.restart_weights, s.eta_min) == ((240000, 240000), (1.0, 1.0), 1e-7)
    assert parse(data).raw["train"]["scheduler"] == {"type": "CosineAnnealingRestartLR", "periods": [240000, 240000],
                                                      "restart_weights": [1.0, 1.0], "eta_min": 1e-7}

    data["train"]["scheduler"].update(periods=[250000, 250000], restart_weights=[1], milestones=[1000])
    problems = problems_of(data)
    assert "train.scheduler.restart_weights: must have one weight per period (2), got [1.0]" in problems
    assert "train.scheduler.milestones: not used by CosineAnnealingRestartLR" in problems
    data["train"]["scheduler"].update(restart_weights=[1, 1], periods=[200000, 200000])
    del data["train"]["scheduler"]["milestones"]
    assert problems_of(data) == ["train.scheduler.periods: must cover the iterations after warm-up, "
                                 "total_iter - warmup_iter (480000), got [200000, 200000] (sum 400000)"]

    data["train"]["scheduler"] = {"type": "CosineAnnealingLR"}
    assert parse(data).train.scheduler.T_max is None
    data["train"]["scheduler"] = {"type": "CosineAnnealingLR", "T_max": 0}
    assert problems_of(data) == ["train.scheduler.T_max: must be a positive integer, got 0"]


def test_aliases_and_defaults() -> None:
    data = light_dict()
    data["val"]["metrics"] = {"psnr": {"type": "psnr"}, "ssim": {"type": "ssim", "crop_border": 2}}
    del data["logger"]
    del data["path"]
    del data["manual_seed"]
    opts = parse(data)
    assert opts.val.metrics["psnr"].type == "calculate_psnr" and opts.val.metrics["ssim"].type == "calculate_ssim"
    assert opts.val.metrics["psnr"].crop_border == 0 and opts.val.metrics["psnr"].better == "higher"
    assert opts.logger.keep_checkpoints == 3 and opts.path.param_key_g == "params" and opts.manual_seed == 0
    assert opts.train.grad_clip_norm is None and opts.train.max_nonfinite_steps == 5


# ---------------------------------------------------------------------- numbers as BasicSR writes them
def test_bare_exponent_numbers_in_files(tmp_path: Path) -> None:
    data = light_dict()
    assert data["train"]["optim_g"]["lr"] == 5e-4  # `!!float 5e-4` in the file
    path = tmp_path / "bare.yml"
    text = (HERE / "options" / "train_SST_light_x2.yml").read_text(encoding="utf-8")
    path.write_text(text.replace("!!float 5e-4", "5e-4"), encoding="utf-8")  # PyYAML reads a bare 5e-4 as a string
    assert load_options(path).train.optim_g.lr == 5e-4


def test_bad_values_carry_their_key_paths() -> None:
    data = light_dict()
    data["train"]["total_iter"] = 1000.5
    data["datasets"]["train"]["num_worker_per_gpu"] = -1
    data["train"]["scheduler"]["milestones"] = [250000, "x"]
    data["train"]["optim_g"]["betas"] = [0.9]
    assert sorted(problems_of(data)) == sorted([
        "train.total_iter: must be an integer, got 1000.5",
        "datasets.train.num_worker_per_gpu: must be a non-negative integer, got -1",
        "train.scheduler.milestones[1]: must be an integer, got 'x'",
        "train.optim_g.betas: must be a list of 2 numbers, got [0.9]",
    ])


# ---------------------------------------------------------------------- --set overrides
def test_overrides_set_numbers_lists_booleans_and_new_keys() -> None:
    data = light_dict()
    out = apply_overrides(data, [
        "train.total_iter=1000", "datasets.train.gt_size=96", "train.scheduler.milestones=[500, 800]",
        "datasets.train.use_rot=false", "train.grad_clip_norm=0.5", "logger.keep_checkpoints=1",
        "val.tile = 256", "name=quick run",
    ])
    assert data["train"]["total_iter"] == 500000  # the input is left alone
    assert out["train"]["total_iter"] == 1000 and out["datasets"]["train"]["gt_size"] == 96
    assert out["train"]["scheduler"]["milestones"] == [500, 800]
    assert out["datasets"]["train"]["use_rot"] is False and out["train"]["grad_clip_norm"] == 0.5
    assert out["val"]["tile"] == 256 and out["name"] == "quick run"

    opts = parse(light_dict(), overrides=["train.total_iter=1000", "train.warmup_iter=-1",
                                          "train.scheduler.milestones=[500, 800]", "train.ema_decay=0",
                                          "datasets.train.use_rot=false", "train.optim_g.lr=1e-3"])
    assert (opts.train.total_iter, opts.train.warmup_iter, opts.train.ema_decay) == (1000, -1, 0.0)
    assert opts.train.scheduler.milestones == (500, 800) and opts.train.optim_g.lr == 1e-3
    assert opts.train_data.use_rot is False
    assert opts.raw["train"]["total_iter"] == 1000


def test_overrides_create_missing_mappings() -> None:
    data = light_dict()
    del data["path"]
    data["val"]["metrics"] = None
    out = apply_overrides(data, ["path.strict_load_g=false", "a.b.c=1", "val.metrics.psnr.type=psnr"])
    assert out["path"] == {"strict_load_g": False} and out["a"] == {"b": {"c": 1}}
    assert out["val"]["metrics"] == {"psnr": {"type": "psnr"}}
    opts = parse(data, overrides=["path.strict_load_g=false", "val.metrics.psnr.type=psnr"])
    assert opts.path.strict_load_g is False and list(opts.val.metrics) == ["psnr"]


def test_malformed_overrides_are_all_reported() -> None:
    with pytest.raises(OptionsError) as info:
        apply_overrides(light_dict(), ["train.total_iter", "=5", "train..lr=1", "name.x=1", "scale=[1", "ok=1"])
    assert info.value.problems == [
        "--set 'train.total_iter': expected KEY=VALUE (e.g. train.total_iter=1000)",
        "--set '=5': malformed key '' (dotted names, e.g. datasets.train.gt_size)",
        "--set 'train..lr=1': malformed key 'train..lr' (dotted names, e.g. datasets.train.gt_size)",
        "--set 'name.x=1': name is not a mapping (it holds 'SST_light_x2')",
        info.value.problems[4],
    ]
    assert info.value.problems[4].startswith("--set 'scale=[1': the value is not valid YAML")


def test_override_problems_join_the_file_problems(tmp_path: Path) -> None:
    path = write(tmp_path, light_dict())
    with pytest.raises(OptionsError) as info:
        load_options(path, ["train.total_iter=-5", "scale.x=1"])
    assert info.value.problems == ["--set 'scale.x=1': scale is not a mapping (it holds 2)",
                                   "train.total_iter: must be a positive integer, got -5"]


# ---------------------------------------------------------------------- paths
def test_relative_paths_resolve_against_the_option_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RIBSR_TEST_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(REPO)
    data = light_dict()
    data["datasets"]["train"]["dataroot_gt"] = "$RIBSR_TEST_DATA/DF2K/HR"
    data["datasets"]["val_1"]["dataroot_gt"] = "../sets/Set5/HR"
    (tmp_path / "conf").mkdir()
    opts = load_options(write(tmp_path / "conf", data))
    assert opts.train_data.dataroot_gt == tmp_path / "data" / "DF2K" / "HR"
    assert opts.val_data["val_1"].dataroot_gt == tmp_path / "sets" / "Set5" / "HR"
    assert opts.val_data["val_1"].dataroot_lq == tmp_path / "conf" / "datasets" / "Set5" / "LR_bicubic" / "X2"
    # a dict without a source or base_dir resolves against the current folder
    assert options_from_dict(light_dict()).train_data.dataroot_gt == REPO / "datasets" / "DF2K" / "HR"


def test_missing_files_are_listed_not_raised(tmp_path: Path) -> None:
    data = light_dict()
    data["path"]["pretrain_network_g"] = "weights/x2.pth"
    data["path"]["resume_state"] = "state"
    opts = parse(data, base_dir=tmp_path)  # nothing exists yet: parsing still succeeds
    missing = opts.missing_files()
    assert f"path.pretrain_network_g: not found: {tmp_path / 'weights' / 'x2.pth'}" in missing
    assert f"datasets.train.dataroot_gt: not found: {tmp_path / 'datasets' / 'DF2K' / 'HR'}" in missing
    assert len(missing) == 6  # two folders per dataset, the weights, the state
    with pytest.raises(OptionsError) as info:
        opts.check_files()
    assert info.value.problems == missing

    for folder in ("datasets/DF2K/HR", "datasets/DF2K/LR_bicubic/X2", "datasets/Set5/HR",
                   "datasets/Set5/LR_bicubic/X2", "weights", "state"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "weights" / "x2.pth").write_bytes(b"")
    assert opts.missing_files() == [f"path.resume_state: not a file: {tmp_path / 'state'}"]


# ---------------------------------------------------------------------- BasicSR keys and files
def test_basicsr_keys_are_named_in_one_notice(caplog: pytest.LogCaptureFixture) -> None:
    data = light_dict()
    data.update(is_train=True, dist=False, auto_resume=True)
    data["datasets"]["val_1"]["phase"] = "val"
    data["path"]["experiments_root"] = "experiments/x"
    with caplog.at_level(logging.INFO, logger=LOGGER):
        parse(data)
    notices = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(notices) == 1
    assert notices[0] == ("ignored BasicSR keys: model_type, num_gpu, dist_params, is_train, dist, auto_resume, "
                          "datasets.train.prefetch_mode, datasets.val_1.phase, logger.wandb, path.experiments_root")


def test_unknown_keys_in_blocks_are_problems() -> None:
    data = light_dict()
    data["datasets"]["train"]["cuda"] = True
    data["train"]["optim_g"]["momentum"] = 0.9
    data["path"]["strict_load"] = False
    problems = problems_of(data)
    assert [p.split(" (known")[0] for p in problems] == [
        "datasets.train.cuda: unknown key", "train.optim_g.momentum: unknown key", "path.strict_load: unknown key"]


@pytest.mark.parametrize(("text", "problem"), [
    ("- a\n- b\n", "the options must be a mapping, got list"),
    ("", "the options must be a mapping, got nothing (an empty file)"),
    ("name: x\nscale: 2\n", "network_g: missing (this does not look like a training option file)"),
    ("name: [unclosed\n", "not valid YAML"),
])
def test_files_that_are_not_option_files(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "bad.yml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(OptionsError) as info:
        load_options(path)
    assert info.value.problems[0].startswith(problem)
    assert str(path) in str(info.value) and info.value.source == str(path)


def test_missing_file_and_duplicate_keys(tmp_path: Path) -> None:
    with pytest.raises(OptionsError, match="cannot read the file"):
        load_options(tmp_path / "absent.yml")
    text = (HERE / "options" / "train_SST_light_x2.yml").read_text(encoding="utf-8")
    path = tmp_path / "dup.yml"
    path.write_text(text.replace("  total_iter: 500000\n", "  total_iter: 500000\n  total_iter: 500000\n"),
                    encoding="utf-8")
    with pytest.raises(OptionsError) as info:
        load_options(path)
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith("duplicate key 'total_iter' (line ")


def test_network_problems_are_prefixed() -> None:
    data = light_dict()
    data["network_g"]["num_heads"] = [5] * 6
    data["network_g"]["upsampler_type"] = "deconv"
    data["network_g"]["depth"] = 3
    problems = problems_of(data)
    assert problems == ["network_g: unknown network_g key 'depth'"]  # SSTConfig stops at unknown keys
    del data["network_g"]["depth"]
    problems = problems_of(data)
    assert "network_g: dim 48 is not divisible by num_heads [5]" in problems
    assert any(p.startswith("network_g: upsampler (upsampler_type) must be one of") for p in problems)


def test_network_types_come_from_their_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    from ribsr.train import options

    seen: list[dict] = []

    def read_other(block: dict) -> object:
        seen.append(block)
        return preset("light", block["upscaling_factor"])

    monkeypatch.setitem(options.NETWORK_TYPES, "Other", read_other)
    data = light_dict()
    data["network_g"] = {"type": "Other"}
    assert parse(data).network == preset("light", 2) and seen == [{"type": "Other", "upscaling_factor": 2}]
    data["network_g"] = {"type": "SwinIR"}
    assert problems_of(data) == ["network_g.type: must be 'SST' or 'ESCRIB' or 'Other', got 'SwinIR'"]


def test_network_without_scale_takes_the_files() -> None:
    data = light_dict()
    del data["network_g"]["upscaling_factor"]
    data["scale"] = 4
    assert parse(data).network == preset("light", 4)


# ---------------------------------------------------------------------- raw
def test_raw_round_trips_and_is_plain_data(tmp_path: Path) -> None:
    opts = load_options(HERE / "options" / "train_SST_base+_x2.yml", ["train.grad_clip_norm=1"])
    assert options_from_dict(opts.raw) == opts
    text = yaml.safe_dump(opts.raw, sort_keys=False)  # plain types only
    assert load_options(write(tmp_path, yaml.safe_load(text), "again.yml")) == opts
    assert opts.raw["network_g"]["type"] == "SST" and opts.raw["train"]["grad_clip_norm"] == 1.0
    assert opts.raw["datasets"]["train"]["dataroot_gt"] == str(HERE / "options" / "datasets" / "SR_mix" / "HR")
    assert "num_gpu" not in opts.raw
    assert opts.raw == opts.to_dict()


def test_options_are_frozen() -> None:
    opts = parse(light_dict())
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.scale = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.train_data.gt_size = 64  # type: ignore[misc]
    assert isinstance(opts.train_data, DatasetOptions)


def test_hostile_network_values_are_listed_with_their_values() -> None:
    data = light_dict()
    data["network_g"].update(n_blocks=10**9, window_sizes=[100000] * 6, exp_ratio=float("inf"))
    assert sorted(problems_of(data)) == [
        "network_g: exp_ratio must be a finite number in [0.125, 16], got inf",
        "network_g: n_blocks must be an integer in [1, 64], got 1000000000",
        "network_g: window_sizes must hold integers in [1, 128], got [100000, 100000, 100000, 100000, 100000, 100000]",
    ]


@pytest.mark.parametrize("network_g", ["", "network_g:\n"])
def test_an_option_file_without_network_g_names_the_file(tmp_path: Path, network_g: str) -> None:
    path = tmp_path / "opts.yml"
    path.write_text(f"name: x\nscale: 2\n{network_g}datasets:\n  train:\n    name: T91\n", encoding="utf-8")
    with pytest.raises(OptionsError) as info:
        load_options(path)
    assert str(path) in str(info.value) and "network_g: missing" in str(info.value)


# ---------------------------------------------------------------------- Real-ESRGAN / SSTReal option files
REAL_STYLE = HERE / "options" / "train_SSTReal_style_x4.yml"


def test_real_esrgan_style_file_needs_feature_weights_and_nothing_else() -> None:
    with pytest.raises(OptionsError) as info:
        load_options(REAL_STYLE)
    assert info.value.problems == [p for p in info.value.problems if p.startswith("train.perceptual_opt.weights:")]
    assert len(info.value.problems) == 1


def test_real_esrgan_style_file_reads_its_degradation_gan_and_usm_keys() -> None:
    opts = load_options(REAL_STYLE, ["train.perceptual_opt.weights=vgg19.pth"])
    d = opts.degradation
    # the stages' keys from the top level, the kernels' from datasets.train
    assert d.resize_prob == (0.2, 0.7, 0.1) and d.noise_range == (1, 30) and d.poisson_scale_range == (0.05, 3)
    assert d.second_blur_prob == 0.8 and d.resize_range2 == (0.3, 1.2) and d.jpeg_range2 == (30, 95)
    assert d.blur_sigma == (0.2, 3) and d.blur_sigma2 == (0.2, 1.5) and d.final_sinc_prob == 0.8
    assert d.kernel_list[0] == "iso" and d.blur_kernel_size == 21
    assert opts.train_data.type == "RealESRGANDataset" and opts.train_data.gt_size == 256
    meta = REAL_STYLE.parent / "datasets/DF2K/meta_info/meta_info_DF2Kmultiscale+OST_sub.txt"
    assert opts.train_data.meta_info_file == meta
    assert (opts.usm.l1_gt_usm, opts.usm.percep_gt_usm, opts.usm.gan_gt_usm) == (True, True, False)
    assert opts.network_d.num_feat == 64 and opts.network_d.skip_connection
    assert opts.train.gan_opt.gan_type == "vanilla" and opts.train.gan_opt.loss_weight == 0.1
    assert opts.train.optim_d.lr == 1e-4 and opts.train.net_d_iters == 1
    p = opts.train.perceptual_opt
    assert p.layer_weights == {"conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1, "conv4_4": 1, "conv5_4": 1}
    assert p.weights == REAL_STYLE.parent / "vgg19.pth"
    assert opts.path.param_key_g == "params_ema"
    # the resolved options read back as they are
    assert options_from_dict(opts.to_dict(), base_dir=REAL_STYLE.parent) == opts


def test_degradation_problems_carry_their_key_paths() -> None:
    data = yaml.safe_load(REAL_STYLE.read_text(encoding="utf-8"))
    data["train"]["perceptual_opt"]["weights"] = "vgg19.pth"
    data["noise_range"] = [30, 1]  # reversed
    data["datasets"]["train"]["kernel_prob"] = [0.5, 0.5]  # 6 kernels
    data["jpeg_range2"] = [30, 120]
    data["datasets"]["train"]["resize_prob"] = [0.2, 0.7, 0.1]  # given twice
    data["datasets"]["train"]["final_sinc_prob"] = 2
    problems = problems_of(data, base_dir=REAL_STYLE.parent)
    text = "\n".join(problems)
    assert "noise_range: the low end exceeds the high end, got (30, 1)" in text
    assert "datasets.train.kernel_prob: needs one weight per kernel_list entry (6), got 2" in text
    assert "jpeg_range2: must be <= 100" in text
    assert "datasets.train.resize_prob: given twice (also as resize_prob)" in text
    assert "datasets.train.final_sinc_prob: must be <= 1" in text
    assert len(problems) == 5, text
