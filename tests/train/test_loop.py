"""The training loop on images generated here (and on the real sets where they are present): loss goes down, resume
is exact, stop signals save, DDP equals one process."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import ribsr
from ribsr.train.export import export_run
from ribsr.train.loop import Distributed, Trainer, TrainingError, build_optimizer, build_scheduler
from ribsr.train.options import options_from_dict
from ribsr.train.state import list_checkpoints

TINY_NET = dict(
    type="SST", dim=16, window_sizes=[4, 8], num_heads=[2, 2], ranks=[4, 4], n_blocks=1, exp_ratio=2,
    rib_hidden_dim=8, rib_n_freqs=4, upscaling_factor=2, upsampler_type="pixelshuffle_direct", gate_type="DWC",
)


def _write_generated_sets(root: Path) -> Path:
    """A small stand-in for ``../shared/datasets``: T91 (12 smooth random 96x96 RGB images), Set5 and Set14 (HR
    and ``LR_bicubic/X2`` made with ``ribsr.imresize``; Set14 holds a grayscale file, as the real one does)."""
    from PIL import Image

    rng = np.random.default_rng(11)

    def image(size: tuple[int, int]) -> np.ndarray:
        small = rng.integers(0, 256, (size[0] // 8, size[1] // 8, 3), dtype=np.uint8)
        return np.asarray(Image.fromarray(small).resize((size[1], size[0]), Image.BICUBIC))

    (root / "T91").mkdir(parents=True)
    for i in range(12):
        Image.fromarray(image((96, 96))).save(root / "T91" / f"t{i:02d}.png")
    for name, sizes in (("Set5", [(40, 48), (44, 44)]), ("Set14", [(36, 52), (48, 40)])):
        (root / name / "HR").mkdir(parents=True)
        (root / name / "LR_bicubic" / "X2").mkdir(parents=True)
        for i, size in enumerate(sizes):
            hr = image(size)
            if name == "Set14" and i == 1:
                hr = hr[:, :, 0]  # stored as grayscale
            Image.fromarray(hr).save(root / name / "HR" / f"img{i}.png")
            lr = ribsr.imresize(hr, 1 / 2)
            Image.fromarray(lr).save(root / name / "LR_bicubic" / "X2" / f"img{i}x2.png")
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Generated images laid out as ``../shared/datasets`` (so these tests run without the shared data)."""
    return _write_generated_sets(tmp_path_factory.mktemp("datasets"))


def tiny_options(datasets_dir: Path, **train_overrides) -> dict:
    """A small recipe: the tiny net on T91 at x2 (24x24 LR patches), validated on Set5."""
    opts = {
        "name": "tiny_x2",
        "scale": 2,
        "manual_seed": 7,
        "network_g": dict(TINY_NET),
        "datasets": {
            "train": {
                "name": "T91", "type": "DownsampleImageDataset", "dataroot_gt": str(datasets_dir / "T91"),
                "io_backend": {"type": "memory"}, "gt_size": 48, "use_hflip": True, "use_rot": True,
                "batch_size_per_gpu": 4, "num_worker_per_gpu": 0,
            },
        },
        "train": {
            "ema_decay": 0.9,
            "optim_g": {"type": "AdamW", "lr": 2e-3, "weight_decay": 0, "betas": [0.9, 0.99]},
            "scheduler": {"type": "MultiStepLR", "milestones": [100], "gamma": 0.5},
            "total_iter": 12,
            "warmup_iter": 3,
            "pixel_opt": {"type": "L1Loss", "loss_weight": 1.0, "reduction": "mean"},
        },
        "logger": {"print_freq": 1, "save_checkpoint_freq": 4, "use_tb_logger": False},
    }
    opts["train"].update(train_overrides)
    return opts


def with_validation(opts: dict, datasets_dir: Path, val_freq: int) -> dict:
    """``opts`` validated on Set5 (PSNR and SSIM on Y, border = scale) every ``val_freq`` iterations."""
    s = opts["scale"]
    opts["datasets"]["val_1"] = {
        "name": "Set5", "type": "PairedImageDataset", "dataroot_gt": str(datasets_dir / "Set5" / "HR"),
        "dataroot_lq": str(datasets_dir / "Set5" / "LR_bicubic" / f"X{s}"), "filename_tmpl": f"{{}}x{s}",
    }
    opts["val"] = {"val_freq": val_freq, "metrics": {
        "psnr": {"type": "calculate_psnr", "crop_border": s, "test_y_channel": True},
        "ssim": {"type": "calculate_ssim", "crop_border": s, "test_y_channel": True},
    }}
    return opts


def train(opts: dict, run_dir: Path, resume=None) -> Trainer:
    trainer = Trainer(options_from_dict(opts), run_dir, resume=resume, progress=False)
    trainer.fit()
    return trainer


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_small_recipe_lowers_the_loss_on_real_images(datasets_dir, tmp_path, one_thread):
    opts = tiny_options(datasets_dir, total_iter=60, warmup_iter=5)
    opts["logger"]["save_checkpoint_freq"] = 1000
    train(opts, tmp_path / "run")
    losses = [m["loss"] for m in read_metrics(tmp_path / "run") if "loss" in m]
    assert len(losses) == 60
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.7 * first, (first, last)


def test_resume_from_total_iter_is_bit_identical(data_dir, tmp_path, one_thread):
    full = train(tiny_options(data_dir, total_iter=12), tmp_path / "full")
    train(tiny_options(data_dir, total_iter=6), tmp_path / "split")
    assert [i for i, _ in list_checkpoints(tmp_path / "split")] == [4, 6]
    resumed = train(tiny_options(data_dir, total_iter=12), tmp_path / "split", resume="auto")
    assert resumed.iteration == 12
    assert states_equal(full.model.state_dict(), resumed.model.state_dict())
    assert states_equal(full.ema.state_dict(), resumed.ema.state_dict())
    a, _ = export_run(tmp_path / "full")
    b, _ = export_run(tmp_path / "split")
    assert states_equal(ribsr.load_model(a).state_dict(), ribsr.load_model(b).state_dict())


def _cli(*args: str, cwd: Path, env_extra: dict | None = None, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "ribsr", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_sigterm_saves_and_resume_is_bit_identical(data_dir, tmp_path, one_thread):
    opts = tiny_options(data_dir, total_iter=400)
    opts["logger"]["save_checkpoint_freq"] = 1000
    opts_path = tmp_path / "opts.yml"
    opts_path.write_text(yaml.safe_dump(opts))
    run_dir = tmp_path / "stopped"
    proc = _cli("train", str(opts_path), "--run-dir", str(run_dir), "--no-progress", cwd=tmp_path)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    (stopped_at, _), = list_checkpoints(run_dir)
    assert 3 <= stopped_at < 400
    assert "--resume auto" in err

    n = stopped_at + 3
    resumed = train(tiny_options(data_dir, total_iter=n), run_dir, resume="auto")
    full = train(tiny_options(data_dir, total_iter=n), tmp_path / "full")
    assert resumed.iteration == full.iteration == n
    assert states_equal(full.model.state_dict(), resumed.model.state_dict())
    assert states_equal(full.ema.state_dict(), resumed.ema.state_dict())


def test_torchrun_two_processes_equal_one_process(data_dir, tmp_path):
    opts = tiny_options(data_dir, total_iter=6)
    opts["datasets"]["train"]["batch_size_per_gpu"] = 2
    one = dict(opts, datasets={**opts["datasets"], "train": {**opts["datasets"]["train"], "batch_size_per_gpu": 4}})
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
    log_text = (tmp_path / "two" / "train.log").read_text()
    assert "2 process(es)" in log_text and "global batch 4" in log_text
    assert "identical on all 2 processes" in log_text
    a = ribsr.load_model(export_run(tmp_path / "two")[0]).state_dict()
    b = ribsr.load_model(export_run(tmp_path / "one")[0]).state_dict()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 1e-4, worst


def test_nonfinite_losses_skip_then_stop_keeping_the_last_checkpoint(data_dir, tmp_path, one_thread,
                                                                     monkeypatch):
    opts = tiny_options(data_dir, total_iter=12, max_nonfinite_steps=3)
    trainer = Trainer(options_from_dict(opts), tmp_path / "run", progress=False)
    real_loss = trainer.loss_fn

    def loss_fn(pred, target):  # finite for 5 iterations, then NaN for good
        return real_loss(pred, target) * (math.nan if trainer.iteration >= 5 else 1.0)

    trainer.loss_fn = loss_fn
    with pytest.raises(TrainingError, match="3 non-finite losses in a row"):
        trainer.fit()
    assert trainer.skipped_steps == 3
    assert [i for i, _ in list_checkpoints(tmp_path / "run")] == [4]
    assert "step skipped" in (tmp_path / "run" / "train.log").read_text()


def test_resume_auto_skips_a_corrupt_newest_checkpoint(data_dir, tmp_path, one_thread, caplog):
    train(tiny_options(data_dir, total_iter=8), tmp_path / "run")
    (_, older), (_, newest) = list_checkpoints(tmp_path / "run")[-2:]
    newest.write_bytes(newest.read_bytes()[:1000])  # a write cut short
    trainer = Trainer(options_from_dict(tiny_options(data_dir, total_iter=8)), tmp_path / "run",
                      resume="auto", progress=False)
    assert trainer.iteration == 4
    assert "cannot be resumed" in caplog.text and newest.name in caplog.text


def test_validation_reports_psnr_of_the_ema_weights(datasets_dir, tmp_path, one_thread):
    opts = with_validation(tiny_options(datasets_dir, total_iter=4), datasets_dir, val_freq=4)
    set14 = dict(opts["datasets"]["val_1"], name="Set14", dataroot_gt=str(datasets_dir / "Set14" / "HR"),
                 dataroot_lq=str(datasets_dir / "Set14" / "LR_bicubic" / "X2"))
    opts["datasets"]["val_2"] = set14  # grayscale bridge.png, and man.png: RGB with equal channels
    trainer = train(opts, tmp_path / "run")
    model = trainer.ema.module.eval()
    from ribsr.evaluate import evaluate_dataset, model_upscaler

    for name in ("Set5", "Set14"):
        expected = evaluate_dataset(model_upscaler(model), datasets_dir / name, 2)
        got = trainer.best[f"{name}/psnr"]
        assert got["iteration"] == 4
        assert got["value"] == pytest.approx(expected["psnr"], abs=1e-6)
        assert trainer.best[f"{name}/ssim"]["value"] == pytest.approx(expected["ssim"], abs=1e-6)


def test_validation_on_generated_sets_equals_evaluate(data_dir, tmp_path, one_thread):
    """As the test above, on the generated sets (RGB and a grayscale file), so it always runs."""
    opts = with_validation(tiny_options(data_dir, total_iter=2), data_dir, val_freq=2)
    opts["datasets"]["val_2"] = dict(opts["datasets"]["val_1"], name="Set14",
                                     dataroot_gt=str(data_dir / "Set14" / "HR"),
                                     dataroot_lq=str(data_dir / "Set14" / "LR_bicubic" / "X2"))
    trainer = train(opts, tmp_path / "run")
    from ribsr.evaluate import evaluate_dataset, model_upscaler

    model = trainer.ema.module.eval()
    for name in ("Set5", "Set14"):
        expected = evaluate_dataset(model_upscaler(model), data_dir / name, 2)
        assert trainer.best[f"{name}/psnr"]["value"] == pytest.approx(expected["psnr"], abs=1e-6)
        assert trainer.best[f"{name}/ssim"]["value"] == pytest.approx(expected["ssim"], abs=1e-6)


def test_learning_rate_follows_warmup_then_milestones(data_dir):
    opts = options_from_dict(tiny_options(data_dir, total_iter=20, warmup_iter=4,
                                          scheduler={"type": "MultiStepLR", "milestones": [8, 12], "gamma": 0.5}))
    model = torch.nn.Linear(1, 1)
    optimizer = build_optimizer(model, opts.train)
    scheduler = build_scheduler(optimizer, opts.train)
    lrs = []
    for _ in range(14):
        lrs.append(optimizer.param_groups[0]["lr"])  # the rate iteration t = len(lrs) learns with
        optimizer.step()
        scheduler.step()
    base = 2e-3
    expected = [base * t / 4 for t in (1, 2, 3, 4)] + [base] * 3 + [base / 2] * 4 + [base / 4] * 3
    assert lrs == pytest.approx(expected, rel=1e-12)


def test_export_writes_ema_safetensors_and_paper_pth(data_dir, tmp_path, one_thread):
    trainer = train(tiny_options(data_dir, total_iter=4), tmp_path / "run")
    st, pth = export_run(tmp_path / "run")
    assert st == tmp_path / "run" / "export" / "tiny_x2.safetensors"
    model = ribsr.load_model(st)
    assert states_equal(model.state_dict(), trainer.ema.module.state_dict())
    paper = torch.load(pth, weights_only=True)
    assert states_equal(paper["params"], trainer.model.state_dict())
    assert states_equal(paper["params_ema"], trainer.ema.module.state_dict())
    raw, _ = export_run(tmp_path / "run", tmp_path / "raw.safetensors", weights="raw")
    assert states_equal(ribsr.load_model(raw).state_dict(), trainer.model.state_dict())
    with pytest.raises(FileExistsError, match="overwrite"):
        export_run(tmp_path / "run")


def test_finetuning_x3_from_x2_resizes_the_upsampler(data_dir, tmp_path, one_thread):
    train(tiny_options(data_dir, total_iter=4), tmp_path / "x2")
    _, pth = export_run(tmp_path / "x2")
    opts = tiny_options(data_dir, total_iter=2)
    opts.update(scale=3, name="tiny_x3")
    opts["network_g"]["upscaling_factor"] = 3
    opts["datasets"]["train"]["gt_size"] = 48
    opts["path"] = {"pretrain_network_g": str(pth), "param_key_g": "params_ema"}
    trainer = Trainer(options_from_dict(opts), tmp_path / "x3", progress=False)
    x2 = torch.load(pth, weights_only=True)["params_ema"]
    assert torch.equal(trainer.model.state_dict()["proj.weight"], x2["proj.weight"])
    assert trainer.model.state_dict()["upsampler.up_conv.weight"].shape[0] == 27


def test_pretrained_weights_by_param_key(data_dir, tmp_path, one_thread):
    train(tiny_options(data_dir, total_iter=4), tmp_path / "x2")
    _, pth = export_run(tmp_path / "x2")
    saved = torch.load(pth, weights_only=True)
    for key in ("params", "params_ema"):
        opts = tiny_options(data_dir)
        opts["path"] = {"pretrain_network_g": str(pth), "param_key_g": key}
        trainer = Trainer(options_from_dict(opts), tmp_path / key, progress=False)
        assert states_equal(trainer.model.state_dict(), saved[key])
    opts["path"]["param_key_g"] = "net_g"
    with pytest.raises(ribsr.CheckpointError, match=r"no 'net_g' entry .*\['params', 'params_ema'\]"):
        Trainer(options_from_dict(opts), tmp_path / "bad", progress=False)


@pytest.mark.cuda
def test_cuda_training_with_bfloat16_autocast(data_dir, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    opts = with_validation(tiny_options(data_dir, total_iter=6), data_dir, val_freq=6)
    trainer = Trainer(options_from_dict(opts), tmp_path / "run", dist_info=Distributed(device=torch.device("cuda")),
                      progress=False)
    trainer.fit()
    losses = [m["loss"] for m in read_metrics(tmp_path / "run") if "loss" in m]
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
    assert trainer.best["Set5/psnr"]["value"] > 10
    assert next(trainer.model.parameters()).dtype == torch.float32  # autocast, not a bfloat16 model


def test_cli_threads_sets_the_cpu_threads_and_rejects_non_positive(data_dir, tmp_path, capsys):
    from ribsr.cli import main

    opts = tiny_options(data_dir, total_iter=1)
    opts_path = tmp_path / "opts.yml"
    opts_path.write_text(yaml.safe_dump(opts))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert main(["train", str(opts_path), "--run-dir", str(tmp_path / "run"), "--no-progress",
                     "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    for bad in ("0", "-2", "two"):
        with pytest.raises(SystemExit) as exc:
            main(["train", str(opts_path), "--threads", bad])
        assert exc.value.code == 2
        assert repr(bad) in capsys.readouterr().err


def test_resume_warns_of_each_optimizer_or_schedule_setting_it_does_not_use(data_dir, tmp_path, one_thread, caplog):
    """A changed lr was ignored without a word: the optimizer's and scheduler's states carry the checkpoint's."""
    train(tiny_options(data_dir, total_iter=4), tmp_path / "run")
    with caplog.at_level(logging.WARNING, logger="ribsr.train.loop"):
        Trainer(options_from_dict(tiny_options(data_dir, total_iter=8)), tmp_path / "run", resume="auto",
                progress=False)
    assert "keeps the optimizer" not in caplog.text  # a longer run: total_iter is the options'
    changed = tiny_options(data_dir, total_iter=8)
    changed["train"]["optim_g"]["lr"] = 1e-3
    changed["train"]["scheduler"]["milestones"] = [50]
    with caplog.at_level(logging.WARNING, logger="ribsr.train.loop"):
        resumed = Trainer(options_from_dict(changed), tmp_path / "run", resume="auto", progress=False)
    text = caplog.text
    assert "the options change train.optim_g.lr: 0.002 in the checkpoint, 0.001 in the options; " in text
    assert "train.scheduler.milestones: [100] in the checkpoint, [50] in the options." in text
    assert "keeps the optimizer and learning-rate schedule saved in its checkpoint, so these changes are not " \
           "used" in text
    assert "ribsr export" in text and "path.pretrain_network_g" in text
    assert resumed.optimizer.param_groups[0]["initial_lr"] == 2e-3  # what the warning says: the checkpoint's
