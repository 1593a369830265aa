"""The training loop of ``ribsr train``: one process, or one of N under ``torchrun`` (DistributedDataParallel).

What a run does, in order: seed, build the network (and load ``path.pretrain_network_g``), wrap it in
DDP when several processes run, keep an EMA copy of its weights, then for each iteration t = k+1 .. n:
take this process's slice of global batch t (:class:`~ribsr.train.data.GlobalBatchSampler`), compute the
pixel loss (bfloat16 autocast on CUDA, float32 on CPU), skip the step when any process's loss is not
finite, step the optimizer, the learning-rate schedule and the EMA; validate the EMA weights every
``val_freq`` iterations; and write a checkpoint every ``save_checkpoint_freq`` iterations, at the end, and
when SIGINT or SIGTERM arrives (after finishing the step). Only rank 0 writes logs, checkpoints and
progress. Resuming loads everything a checkpoint holds; since every sample depends only on the seed and
its position in the global sample order, a resumed run continues exactly where the stopped one was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim import lr_scheduler
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ribsr.build import build_sst
from ribsr.checkpoint import CheckpointError, checkpoint_scale, read_checkpoint, resize_upsampler
from ribsr.config import SSTConfig
from ribsr.degrade import DegradationOptions
from ribsr.inference import Upscaler
from ribsr.metrics import psnr, ssim
from ribsr.model import SST
from ribsr.model.sst import DEFAULT_BIAS_CACHE_BYTES
from ribsr.train import data as train_data
from ribsr.train.options import DatasetOptions, Options, SchedulerOptions, TrainOptions
from ribsr.train.state import (
    ResumeError,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """The run cannot go on (for instance several non-finite losses in a row); the last good checkpoint is kept."""


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped the run after a checkpoint was written; ``signum`` names the signal."""

    def __init__(self, signum: int, checkpoint: Path | None) -> None:
        self.signum = signum
        self.checkpoint = checkpoint
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name}" + (f"; checkpoint {checkpoint}" if checkpoint else ""))


# ---------------------------------------------------------------------- processes and devices
@dataclass(frozen=True)
class Distributed:
    """Where this process stands: its rank among ``world_size`` processes and its device."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str | None = None) -> Distributed:
    """Join the process group that ``torchrun`` describes in the environment (nccl on CUDA, gloo on CPU).

    Without ``torchrun`` (no ``WORLD_SIZE`` above 1) this is one process. ``device``: ``"cpu"``, ``"cuda"``
    or None for CUDA when available.
    """
    if device not in (None, "auto", "cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    use_cuda = torch.cuda.is_available() if device in (None, "auto") else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but CUDA is not available")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Distributed(rank=rank, world_size=world_size, device=dev)


# ---------------------------------------------------------------------- building blocks from options
def charbonnier_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-12, reduction: str = "mean"):
    """sqrt((pred - target)^2 + eps), reduced by mean or sum."""
    value = torch.sqrt((pred - target) ** 2 + eps)
    return value.mean() if reduction == "mean" else value.sum()


def build_loss(opts: TrainOptions):
    """The pixel loss of ``train.pixel_opt`` as a function (pred, target) -> scalar."""
    p = opts.pixel_opt
    if p.type == "L1Loss":
        def loss(pred, target):
            return p.loss_weight * F.l1_loss(pred, target, reduction=p.reduction)
    elif p.type == "MSELoss":
        def loss(pred, target):
            return p.loss_weight * F.mse_loss(pred, target, reduction=p.reduction)
    else:  # CharbonnierLoss
        def loss(pred, target):
            return p.loss_weight * charbonnier_loss(pred, target, p.eps, p.reduction)
    return loss


OPTIMIZERS = {"Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW}


def build_optimizer(model: nn.Module, opts: TrainOptions) -> torch.optim.Optimizer:
    """``train.optim_g``: Adam or AdamW over the parameters that need gradients."""
    o = opts.optim_g
    params = [p for p in model.parameters() if p.requires_grad]
    return OPTIMIZERS[o.type](params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, opts: TrainOptions) -> lr_scheduler.LRScheduler:
    """The learning-rate schedule: linear warm-up over ``warmup_iter``, then ``train.scheduler``.

    Stepped once after every iteration. Iteration t (from 1) learns with ``lr * t / warmup_iter`` while
    t <= warmup_iter (as BasicSR); then MultiStepLR gives ``lr * gamma ** (milestones <= t)`` (milestones
    count iterations from the start of the run, as BasicSR's); the cosine schedules start at the end of the
    warm-up: ``CosineAnnealingLR`` over ``T_max`` (default: the iterations after warm-up) and
    ``CosineAnnealingRestartLR`` over ``periods`` (restart weights of 1).
    """
    warmup = max(opts.warmup_iter, 0)
    main = _main_scheduler(optimizer, opts.scheduler, warmup, opts.total_iter)
    if warmup <= 1:
        return main
    warm = lr_scheduler.LinearLR(optimizer, start_factor=1.0 / warmup, end_factor=1.0, total_iters=warmup - 1)
    return lr_scheduler.SequentialLR(optimizer, [warm, main], milestones=[warmup])


def _main_scheduler(optimizer: torch.optim.Optimizer, s: SchedulerOptions, warmup: int,
                    total_iter: int) -> lr_scheduler.LRScheduler:
    # The options already hold milestones after the warm-up, restart weights of 1 and BasicSR's names
    # normalised (MultiStepRestartLR -> MultiStepLR); see ribsr.train.options.
    if s.type == "MultiStepLR":
        # Step k of this scheduler is iteration t = warmup + 1 + k; BasicSR decays at iteration t = milestone.
        shifted = [m - warmup - 1 for m in s.milestones]
        return lr_scheduler.MultiStepLR(optimizer, milestones=shifted, gamma=s.gamma)
    if s.type == "CosineAnnealingLR":
        t_max = s.T_max if s.T_max is not None else total_iter - warmup
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=t_max, eta_min=s.eta_min)
    # CosineAnnealingRestartLR: one cosine per period, each restarting from the base learning rate.
    pieces = [lr_scheduler.CosineAnnealingLR(optimizer, T_max=p, eta_min=s.eta_min) for p in s.periods]
    if len(pieces) == 1:
        return pieces[0]
    bounds = [sum(s.periods[: i + 1]) for i in range(len(s.periods) - 1)]
    return lr_scheduler.SequentialLR(optimizer, pieces, milestones=bounds)


def load_pretrained(model: SST, path: Path, param_key: str = "params", strict: bool = True) -> None:
    """Load ``path.pretrain_network_g`` into ``model``: the ``param_key`` entry of a ``.pth`` (else
    ``params_ema``/``params`` as available), or our ``.safetensors``; an upsampler trained for another
    scale is resized to the model's (fine-tuning x3/x4 from x2)."""
    state, _ = read_checkpoint(path)  # checks the file; a bare state dict is used as it is
    if path.suffix != ".safetensors":
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(obj.get(param_key), dict):
            state = {k.removeprefix("module."): v for k, v in obj[param_key].items() if isinstance(v, torch.Tensor)}
        elif "params" in obj or "params_ema" in obj:
            raise CheckpointError(f"{path}: no {param_key!r} entry (path.param_key_g); it holds {sorted(obj)}")
    cfg = model.config
    src_scale = checkpoint_scale(state, cfg.upsampler)
    if src_scale is not None and src_scale != cfg.scale:
        state = resize_upsampler(state, cfg.upsampler, src_scale, cfg.scale)
        log.info("%s holds x%d weights: resized its upsampler to x%d", path.name, src_scale, cfg.scale)
    result = model.load_state_dict(state, strict=strict)
    if not strict and (result.missing_keys or result.unexpected_keys):
        log.warning("%s: missing keys %s, unexpected keys %s", path.name, result.missing_keys[:8],
                    result.unexpected_keys[:8])
    log.info("loaded pretrained weights from %s", path)


def build_dataset(d: DatasetOptions, scale: int, seed: int, train: bool, *,
                  degradation: DegradationOptions | None = None, gt_usm: bool = False):
    """The dataset a ``datasets.*`` block describes (random crops when ``train``; whole images otherwise);
    ``degradation`` and ``gt_usm`` are those of a ``RealESRGANDataset``."""
    common = dict(
        gt_size=d.gt_size if train else None, use_hflip=d.use_hflip and train, use_rot=d.use_rot and train,
        io_backend=d.io_backend.type, meta_info_file=d.meta_info_file, name=d.name,
    )
    if train:
        common.update(seed=seed, dataset_enlarge_ratio=d.dataset_enlarge_ratio, shuffle=d.use_shuffle)
    if d.type == "PairedImageDataset":
        return train_data.PairedImageDataset(d.dataroot_gt, d.dataroot_lq, scale, filename_tmpl=d.filename_tmpl,
                                             **common)
    if d.type == "RealESRGANDataset":
        return train_data.RealESRGANDataset(d.dataroot_gt, scale, degradation=degradation, gt_usm=gt_usm, **common)
    return train_data.DownsampleImageDataset(d.dataroot_gt, scale, **common)


# ---------------------------------------------------------------------- the trainer
@dataclass
class TrainResult:
    """What a finished run reached."""

    iteration: int
    checkpoint: Path | None
    best: dict[str, dict[str, float]] = field(default_factory=dict)
    skipped_steps: int = 0


class _StopSignals:
    """Records SIGINT/SIGTERM instead of dying, so the loop can finish its step and save."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave the handlers alone
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.received = signum
        log.warning("received %s: finishing this step, then saving a checkpoint", signal.Signals(signum).name)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer:
    """Trains the network of an :class:`~ribsr.train.options.Options` in ``run_dir``.

    ``resume``: None (a fresh run), ``"auto"`` (the newest readable checkpoint of ``run_dir``, else a fresh
    run) or the path of a checkpoint. ``progress`` shows a progress bar on rank 0.
    """

    def __init__(self, opts: Options, run_dir: str | Path, *, dist_info: Distributed | None = None,
                 resume: str | Path | None = None, progress: bool = True) -> None:
        self.opts = opts
        self.run_dir = Path(run_dir)
        self.dist = dist_info or Distributed()
        self.progress = progress and self.dist.is_main
        self.device = self.dist.device
        opts.check_files()

        torch.manual_seed(opts.manual_seed)
        self.model = build_sst(opts.network, attention="auto").to(self.device)
        if opts.path.pretrain_network_g is not None:
            load_pretrained(self.model, opts.path.pretrain_network_g, opts.path.param_key_g, opts.path.strict_load_g)
        t = opts.train
        self.ema = (
            AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(t.ema_decay), use_buffers=True)
            if t.ema_decay > 0 else None
        )
        self.optimizer = build_optimizer(self.model, t)
        self.scheduler = build_scheduler(self.optimizer, t)
        self.loss_fn = build_loss(t)
        self.iteration = 0
        self.best: dict[str, dict[str, float]] = {}
        self.skipped_steps = 0
        self.nonfinite_streak = 0

        real = {"degradation": opts.degradation, "gt_usm": opts.usm.gt_usm}
        self.train_set = build_dataset(opts.train_data, opts.scale, opts.manual_seed, train=True, **real)
        self.val_sets = {
            key: build_dataset(d, opts.scale, opts.manual_seed, train=False, **real) for key, d in opts.val_data.items()
        }
        self._resume(resume)
        self.net: nn.Module = self.model
        if self.dist.enabled:
            self.net = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self._tb = None

    # ------------------------------------------------------------------ resume
    def _resume(self, resume: str | Path | None) -> None:
        if resume is None and self.opts.path.resume_state is not None:
            resume = self.opts.path.resume_state
        if resume is None:
            return
        if str(resume) == "auto":
            found = latest_checkpoint(self.run_dir)
            if found is None:
                log.info("no checkpoint in %s: starting a new run", self.run_dir)
                return
            path, state = found
        else:
            path, state = Path(resume), load_checkpoint(resume)
        stored = SSTConfig.from_json(state["config"], source=str(path))
        if stored != self.opts.network:
            raise ResumeError(f"{path} was trained with another network ({stored}) than the options give "
                              f"({self.opts.network})")
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise ResumeError(f"{path} holds no EMA weights but train.ema_decay is {self.opts.train.ema_decay}")
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.iteration = int(state["iteration"])
        self.best = state.get("best", {})
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.nonfinite_streak = int(state.get("nonfinite_streak", 0))
        log.info("resumed from %s at iteration %d", path, self.iteration)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything a checkpoint holds (see :mod:`ribsr.train.state`)."""
        from ribsr import __version__

        return {
            "iteration": self.iteration,
            "model": self.model.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "options": self.opts.raw,
            "config": self.opts.network.to_json(),
            "best": self.best,
            "skipped_steps": self.skipped_steps,
            "nonfinite_streak": self.nonfinite_streak,
            "ribsr_version": __version__,
        }

    def weights_digest(self) -> str:
        """SHA-256 of the network's weights, byte for byte (equal on every process of a sound DDP run)."""
        digest = hashlib.sha256()
        for name, tensor in self.model.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    def check_ranks_agree(self) -> None:
        """Raise :class:`TrainingError` when the processes' weights differ (rank 0 logs when they agree)."""
        digests: list[str | None] = [None] * self.dist.world_size
        dist.all_gather_object(digests, self.weights_digest())
        if len(set(digests)) != 1:
            raise TrainingError(f"the weights differ between processes at iteration {self.iteration}: {digests}")
        log.info("iteration %d: weights identical on all %d processes", self.iteration, self.dist.world_size)

    def save(self) -> Path | None:
        """Write a checkpoint of the current iteration (rank 0; the others return None).

        Under DDP the processes' weights are first checked to be identical.
        """
        path = None
        if self.dist.enabled:
            self.check_ranks_agree()
        if self.dist.is_main:
            path = save_checkpoint(self.state_dict(), self.run_dir, self.opts.logger.keep_checkpoints)
            log.info("saved %s", path)
        if self.dist.enabled:
            dist.barrier()
        return path

    # ------------------------------------------------------------------ the loop
    def batches(self) -> Iterator[dict[str, Any]]:
        """This process's batches from the current iteration on (``lq``, ``gt``: (B, 3, h, w) tensors)."""
        d = self.opts.train_data
        loader = train_data.build_dataloader(
            self.train_set, d.batch_size_per_gpu, rank=self.dist.rank, world_size=self.dist.world_size,
            start_iter=self.iteration, total_iter=self.opts.train.total_iter, num_workers=d.num_worker_per_gpu,
            pin_memory=self.device.type == "cuda",
        )
        yield from loader

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def fit(self) -> TrainResult:
        """Train from the current iteration to ``train.total_iter``; returns where it ended.

        Raises :class:`TrainingInterrupted` after saving when a stop signal arrived, and
        :class:`TrainingError` when too many losses in a row were not finite.
        """
        total = self.opts.train.total_iter
        self._start_logging()
        last_saved: Path | None = None
        if self.iteration >= total:
            log.info("nothing to do: the run is at iteration %d of %d", self.iteration, total)
            return TrainResult(self.iteration, None, self.best, self.skipped_steps)
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=self.iteration, unit="it", dynamic_ncols=True, desc=self.opts.name)
        window_loss, window_n, window_iters, window_t0 = 0.0, 0, 0, time.perf_counter()
        self.model.train()
        with _StopSignals() as stop:
            for batch in self.batches():
                it = self.iteration + 1
                loss_value, finite, stop_now = self.step(batch, stop.received is not None)
                self.iteration = it
                window_iters += 1
                if finite:
                    window_loss, window_n = window_loss + loss_value, window_n + 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_value:.4g}", lr=f"{self.current_lr():.3g}", refresh=False)
                if it % self.opts.logger.print_freq == 0 or it == total:
                    seconds = (time.perf_counter() - window_t0) / window_iters
                    mean = window_loss / window_n if window_n else float("nan")
                    self._log_scalars(it, {"loss": mean, "lr": self.current_lr(), "seconds_per_iter": seconds})
                    window_loss, window_n, window_iters, window_t0 = 0.0, 0, 0, time.perf_counter()
                if self.opts.val is not None and (it % self.opts.val.val_freq == 0 or it == total):
                    self.validate()
                if stop_now or it % self.opts.logger.save_checkpoint_freq == 0 or it == total:
                    last_saved = self.save()
                if stop_now:
                    if bar is not None:
                        bar.close()
                    raise TrainingInterrupted(stop.received or signal.SIGTERM, last_saved)
        if bar is not None:
            bar.close()
        if self._tb is not None:
            self._tb.close()
        return TrainResult(self.iteration, last_saved, self.best, self.skipped_steps)

    def step(self, batch: dict[str, Any], stop_requested: bool = False) -> tuple[float, bool, bool]:
        """One optimisation step; returns (mean loss over processes, whether it was finite, stop now)."""
        lq = batch["lq"].to(self.device, non_blocking=True)
        target = "gt_usm" if "gt_usm" in batch and self.opts.usm.l1_gt_usm else "gt"
        gt = batch[target].to(self.device, non_blocking=True)
        with self._autocast():
            pred = self.net(lq)
        loss = self.loss_fn(pred.float(), gt)
        # One collective per step: the loss sum, the count of non-finite losses and the stop requests.
        stats = torch.stack([
            torch.nan_to_num(loss.detach().float(), nan=0.0, posinf=0.0, neginf=0.0),
            (~torch.isfinite(loss.detach())).float(),
            torch.tensor(float(stop_requested), device=loss.device),
        ])
        if self.dist.enabled:
            dist.all_reduce(stats)
        loss_sum, nonfinite, stops = stats.tolist()
        self.optimizer.zero_grad(set_to_none=True)
        if nonfinite:
            self.skipped_steps += 1
            self.nonfinite_streak += 1
            log.warning("iteration %d: non-finite loss in %d process(es); step skipped", self.iteration + 1,
                        int(nonfinite))
            if self.nonfinite_streak >= self.opts.train.max_nonfinite_steps:
                raise TrainingError(
                    f"{self.nonfinite_streak} non-finite losses in a row at iteration {self.iteration + 1}; "
                    f"the last good checkpoint is kept in {self.run_dir}"
                )
            self.scheduler.step()
            return float("nan"), False, stops > 0
        self.nonfinite_streak = 0
        loss.backward()
        if self.opts.train.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.opts.train.grad_clip_norm)
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return loss_sum / self.dist.world_size, True, stops > 0

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # ------------------------------------------------------------------ validation
    def eval_model(self) -> SST:
        """The weights that are validated and exported: the EMA when kept, else the trained ones."""
        return self.ema.module if self.ema is not None else self.model

    @torch.no_grad()
    def validate(self) -> dict[str, dict[str, float]]:
        """Metrics of ``val.metrics`` on every validation set (rank 0 computes; the others wait)."""
        results: dict[str, dict[str, float]] = {}
        if self.dist.is_main and self.opts.val is not None:
            model = self.eval_model()
            was_training = model.training
            tile = self.opts.val.tile
            upscaler = Upscaler(model, tile=tile if tile else None, dtype=torch.float32, device=self.device)
            for key, dataset in self.val_sets.items():
                results[key] = self._validate_set(upscaler, dataset)
                name = self.opts.val_data[key].name
                text = ", ".join(f"{m} {v:.4f}" for m, v in results[key].items())
                log.info("iteration %d: %s %s", self.iteration, name, text)
                self._log_scalars(self.iteration, {f"val/{name}/{m}": v for m, v in results[key].items()}, quiet=True)
                self._update_best(name, results[key])
            model.train(was_training)
            model.set_bias_cache(DEFAULT_BIAS_CACHE_BYTES)  # drop the biases cached for these weights
        if self.dist.enabled:
            dist.barrier()
        return results

    def _validate_set(self, upscaler: Upscaler, dataset) -> dict[str, float]:
        metrics = self.opts.val.metrics
        sums = dict.fromkeys(metrics, 0.0)
        for i in range(len(dataset)):
            item = dataset[i]
            sr = upscaler.upscale_tensor(item["lq"].unsqueeze(0).to(self.device))[0].float().clamp(0, 1).cpu()
            gt = item["gt"]
            if item["gray"]:  # a grayscale file: compare one channel, as ribsr evaluate does
                sr, gt = sr.mean(0), gt[0]
            for name, m in metrics.items():
                fn = psnr if m.type in ("calculate_psnr", "psnr") else ssim
                sums[name] += fn(sr, gt, crop_border=m.crop_border, y_channel=m.test_y_channel)
        return {name: s / max(1, len(dataset)) for name, s in sums.items()}

    def _update_best(self, name: str, values: dict[str, float]) -> None:
        for metric, value in values.items():
            better = self.opts.val.metrics[metric].better == "higher"
            key = f"{name}/{metric}"
            old = self.best.get(key)
            if old is None or (value > old["value"] if better else value < old["value"]):
                self.best[key] = {"value": value, "iteration": self.iteration}

    # ------------------------------------------------------------------ logging
    def _start_logging(self) -> None:
        if not self.dist.is_main:
            logging.getLogger("ribsr").setLevel(logging.WARNING)
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.run_dir / "train.log"
        root = logging.getLogger("ribsr")
        if not any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == log_path.resolve()
                   for h in root.handlers):
            handler = logging.FileHandler(log_path, encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            root.addHandler(handler)
            if root.level == logging.NOTSET or root.level > logging.INFO:
                root.setLevel(logging.INFO)
        options_path = self.run_dir / "options.yml"
        options_path.write_text(yaml.safe_dump(self.opts.raw, sort_keys=False), encoding="utf-8")
        n_params = sum(p.numel() for p in self.model.parameters())
        log.info("run %s in %s: %s, %d parameters, %d process(es) on %s, global batch %d, iterations %d..%d",
                 self.opts.name, self.run_dir, self.opts.network.to_json(), n_params, self.dist.world_size,
                 self.device, self.opts.train_data.batch_size_per_gpu * self.dist.world_size,
                 self.iteration + 1, self.opts.train.total_iter)
        if self.opts.logger.use_tb_logger:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.warning("logger.use_tb_logger is set but tensorboard is not installed "
                            "(pip install 'ribsr[tensorboard]'): logging to %s only", log_path)
            else:
                self._tb = SummaryWriter(str(self.run_dir / "tb"))

    def _log_scalars(self, it: int, values: dict[str, float], quiet: bool = False) -> None:
        if not self.dist.is_main:
            return
        if not quiet:
            log.info("iteration %d/%d: %s", it, self.opts.train.total_iter,
                     ", ".join(f"{k} {v:.6g}" for k, v in values.items()))
        self._write_metrics(it, values)
        if self._tb is not None:
            for k, v in values.items():
                if math.isfinite(v):
                    self._tb.add_scalar(k, v, it)

    def _write_metrics(self, it: int, values: dict[str, float]) -> None:
        """Append to ``metrics.jsonl`` (one JSON object per line: iteration and values) for plots."""
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"iteration": it, **values}) + "\n")

