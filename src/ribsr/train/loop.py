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

With ``network_d`` (Real-ESRGAN's GAN stage) each iteration has a generator step (pixel, perceptual and
adversarial losses, the discriminator frozen) and a discriminator step (real and fake losses), each with its own
optimizer and schedule (the same schedule options for both, as BasicSR); the discriminator and the perceptual
loss's VGG run in float32. A ``perceptual_opt`` without ``network_d`` adds the perceptual loss to the pixel loss.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import signal
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim import lr_scheduler
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ribsr.build import build_network
from ribsr.checkpoint import CheckpointError, load_pretrained
from ribsr.config import config_from_json
from ribsr.degrade import DegradationOptions
from ribsr.model import SST
from ribsr.model.discriminator import UNetDiscriminatorSN
from ribsr.train import data as train_data
from ribsr.train.losses import GANLoss, PerceptualLoss, VGGFeatureExtractor
from ribsr.train.options import (
    DatasetOptions,
    DiscriminatorOptions,
    GANLossOptions,
    OptimizerOptions,
    Options,
    PerceptualOptions,
    SchedulerOptions,
    TrainOptions,
)
from ribsr.train.report import RunReport
from ribsr.train.state import (
    ResumeError,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from ribsr.train.validate import update_best, validation_sets

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


def build_optimizer(model: nn.Module, opts: TrainOptions,
                    optim: OptimizerOptions | None = None) -> torch.optim.Optimizer:
    """``train.optim_g`` (or ``optim``, e.g. ``train.optim_d``): Adam or AdamW over the parameters that need
    gradients."""
    o = optim if optim is not None else opts.optim_g
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


# The train.* settings a resumed run takes from its checkpoint (the optimizers' and schedulers' states), not from
# the options: lr, betas, weight_decay, eps, the schedule and its warm-up.
KEPT_ON_RESUME = ("optim_g", "optim_d", "scheduler", "warmup_iter")


def kept_setting_changes(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``train.KEY: OLD in the checkpoint, NEW in the options`` for every setting of :data:`KEPT_ON_RESUME` (and
    the keys under it) that differs between a checkpoint's ``train`` block and the options'."""
    changes: list[str] = []

    def walk(old: Any, new: Any, where: str) -> None:
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            for key in sorted(set(old) | set(new), key=str):
                walk(old.get(key), new.get(key), f"{where}.{key}")
        elif old != new and not (isinstance(old, list | tuple) and isinstance(new, list | tuple)
                                 and list(old) == list(new)):
            changes.append(f"{where}: {old!r} in the checkpoint, {new!r} in the options")

    for key in KEPT_ON_RESUME:
        walk(stored.get(key), current.get(key), f"train.{key}")
    return changes


def build_discriminator(d: DiscriminatorOptions) -> UNetDiscriminatorSN:
    """The discriminator of ``network_d``."""
    return UNetDiscriminatorSN(d.num_in_ch, d.num_feat, d.skip_connection)


def build_gan_loss(g: GANLossOptions) -> GANLoss:
    """The adversarial loss of ``train.gan_opt``."""
    return GANLoss(g.gan_type, g.real_label_val, g.fake_label_val, g.loss_weight)


def build_perceptual(p: PerceptualOptions) -> PerceptualLoss:
    """The perceptual loss of ``train.perceptual_opt``, its VGG read from ``weights``."""
    if p.weights is None:  # the options refuse this; a hand-made PerceptualOptions may not
        raise ValueError("train.perceptual_opt.weights is not set: the perceptual loss needs VGG weights")
    vgg = VGGFeatureExtractor(list(p.layer_weights), p.vgg_type, p.use_input_norm, p.range_norm)
    vgg.load_weights(p.weights)
    return PerceptualLoss(vgg, p.layer_weights, p.perceptual_weight, p.style_weight, p.criterion)


def load_pretrained_d(disc: nn.Module, path: Path, param_key: str = "params", strict: bool = True) -> None:
    """Load ``path.pretrain_network_d`` into ``disc``: the ``param_key`` entry of a ``.pth`` (a bare state dict is
    used as it is; Real-ESRGAN's spectral-norm key names are accepted), or a ``.safetensors`` state dict."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign files raise many types
        raise CheckpointError(f"{path}: cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    if isinstance(obj.get(param_key), Mapping):
        obj = obj[param_key]
    elif "params" in obj or "params_ema" in obj:
        raise CheckpointError(f"{path}: no {param_key!r} entry (path.param_key_d); it holds {sorted(obj)}")
    state = {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    try:
        result = disc.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: does not fit network_d ({exc})") from None
    if not strict and (result.missing_keys or result.unexpected_keys):
        log.warning("%s: missing keys %s, unexpected keys %s", path.name, result.missing_keys[:8],
                    result.unexpected_keys[:8])
    log.info("loaded pretrained discriminator weights from %s", path)


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
        self.model = build_network(opts.network, attention="auto").to(self.device)
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
        self.disc: UNetDiscriminatorSN | None = None
        self.optimizer_d: torch.optim.Optimizer | None = None
        self.scheduler_d: lr_scheduler.LRScheduler | None = None
        self.gan_loss: GANLoss | None = None
        if opts.network_d is not None:
            self.disc = build_discriminator(opts.network_d).to(self.device)
            if opts.path.pretrain_network_d is not None:
                load_pretrained_d(self.disc, opts.path.pretrain_network_d, opts.path.param_key_d,
                                  opts.path.strict_load_d)
            self.optimizer_d = build_optimizer(self.disc, t, t.optim_d)
            self.scheduler_d = build_scheduler(self.optimizer_d, t)
            self.gan_loss = build_gan_loss(t.gan_opt)
        self.perceptual = None if t.perceptual_opt is None else build_perceptual(t.perceptual_opt).to(self.device)
        self.step_log: dict[str, float] = {}  # the named losses of the last step (GAN stage, perceptual loss)
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
        self.net_d: nn.Module | None = self.disc
        if self.disc is not None and self.dist.enabled:
            self.net_d = DistributedDataParallel(
                self.disc, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.report = RunReport(self.run_dir, opts, main=self.dist.is_main, log=log)

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
        stored = config_from_json(state["config"], source=str(path))
        if stored != self.opts.network:
            raise ResumeError(f"{path} was trained with another network ({stored}) than the options give "
                              f"({self.opts.network})")
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise ResumeError(f"{path} holds no EMA weights but train.ema_decay is {self.opts.train.ema_decay}")
            self.ema.load_state_dict(state["ema"])
        self._warn_kept_settings(path, state)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self._resume_discriminator(path, state)
        set_rng_state(state["rng"])
        self.iteration = int(state["iteration"])
        self.best = state.get("best", {})
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.nonfinite_streak = int(state.get("nonfinite_streak", 0))
        log.info("resumed from %s at iteration %d", path, self.iteration)

    def _warn_kept_settings(self, path: Path, state: dict[str, Any]) -> None:
        """Warn about each optimizer or learning-rate setting the options change from the checkpoint's: resuming
        loads the optimizers' and schedulers' states, which hold the checkpoint's values (a changed lr was
        ignored without a word)."""
        stored = state.get("options")
        if not self.dist.is_main or not isinstance(stored, Mapping) or not isinstance(stored.get("train"), Mapping):
            return
        changes = kept_setting_changes(stored["train"], self.opts.raw.get("train", {}))
        if changes:
            one = len(changes) == 1
            log.warning("resuming from %s: the options change %s. A resumed run keeps the optimizer and learning-rate "
                        "schedule saved in its checkpoint, so %s not used; to train with %s, export this run's "
                        "weights (ribsr export) and start a new run from them (path.pretrain_network_g)",
                        path, "; ".join(changes), "this change is" if one else "these changes are",
                        "it" if one else "them")

    def _resume_discriminator(self, path: Path, state: dict[str, Any]) -> None:
        if self.disc is None:
            if state.get("net_d") is not None:
                raise ResumeError(f"{path} holds a discriminator (a GAN stage) but the options give no network_d")
            return
        if state.get("net_d") is None:
            raise ResumeError(f"{path} holds no discriminator but the options give network_d; to start the GAN "
                              "stage from this run's weights, export it and set path.pretrain_network_g")
        stored = state.get("config_d")
        wanted = dataclasses.asdict(self.opts.network_d)
        if stored != wanted:
            raise ResumeError(f"{path} was trained with another discriminator ({stored}) than network_d ({wanted})")
        self.disc.load_state_dict(state["net_d"])
        self.optimizer_d.load_state_dict(state["optimizer_d"])
        self.scheduler_d.load_state_dict(state["scheduler_d"])

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything a checkpoint holds (see :mod:`ribsr.train.state`)."""
        from ribsr import __version__

        gan = {} if self.disc is None else {
            "net_d": self.disc.state_dict(),
            "optimizer_d": self.optimizer_d.state_dict(),
            "scheduler_d": self.scheduler_d.state_dict(),
            "config_d": dataclasses.asdict(self.opts.network_d),
        }
        return {
            "iteration": self.iteration,
            "model": self.model.state_dict(),
            **gan,
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
        """SHA-256 of the network's (and discriminator's) weights, byte for byte (equal on every process of a sound
        DDP run)."""
        digest = hashlib.sha256()
        items = list(self.model.state_dict().items())
        if self.disc is not None:
            items += [(f"net_d.{k}", v) for k, v in self.disc.state_dict().items()]
        for name, tensor in items:
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

    def _batches_saving_on_error(self) -> Iterator[dict[str, Any]]:
        """:meth:`batches`; when one cannot be loaded (a corrupt image), a checkpoint of the iterations done is
        written first (one process only: under DDP the others could not join it), then the error is raised, a
        :class:`~ribsr.train.data.DataError` saying where that checkpoint is."""
        batches = self.batches()
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except Exception as exc:
                saved = None
                if self.iteration > 0 and not self.dist.enabled:
                    done = checkpoint_path(self.run_dir, self.iteration)
                    saved = done if done.is_file() else self.save()
                what = (f"saved {saved}: mend or remove the file, then continue with --resume auto" if saved
                        else "no checkpoint saved: " + ("the other processes cannot join a save under DDP"
                                                        if self.dist.enabled else "no iteration was done"))
                if isinstance(exc, train_data.DataError):
                    raise train_data.DataError(f"{exc}\n(loading the batch of iteration {self.iteration + 1}; "
                                               f"{what})") from exc
                log.error("loading the batch of iteration %d failed; %s", self.iteration + 1, what)
                raise
            yield batch

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
        self.report.start(self.model, self.dist.world_size, self.device, self.iteration + 1)
        last_saved: Path | None = None
        if self.iteration >= total:
            log.info("nothing to do: the run is at iteration %d of %d", self.iteration, total)
            return TrainResult(self.iteration, None, self.best, self.skipped_steps)
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=self.iteration, unit="it", dynamic_ncols=True, desc=self.opts.name)
        window_loss, window_n, window_iters, window_t0 = 0.0, 0, 0, time.perf_counter()
        window_parts: dict[str, float] = {}  # sums of the named losses (logged when there is more than the pixel one)
        self.model.train()
        with _StopSignals() as stop:
            for batch in self._batches_saving_on_error():
                it = self.iteration + 1
                loss_value, finite, stop_now = self.step(batch, stop.received is not None)
                self.iteration = it
                window_iters += 1
                if finite:
                    window_loss, window_n = window_loss + loss_value, window_n + 1
                    for k, v in self.step_log.items():
                        window_parts[k] = window_parts.get(k, 0.0) + v
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_value:.4g}", lr=f"{self.current_lr():.3g}", refresh=False)
                if it % self.opts.logger.print_freq == 0 or it == total:
                    seconds = (time.perf_counter() - window_t0) / window_iters
                    mean = window_loss / window_n if window_n else float("nan")
                    parts = {k: v / window_n for k, v in window_parts.items()} if len(window_parts) > 1 else {}
                    self.report.scalars(it, {"loss": mean, **parts, "lr": self.current_lr(),
                                               "seconds_per_iter": seconds})
                    window_loss, window_n, window_iters, window_t0 = 0.0, 0, 0, time.perf_counter()
                    window_parts = {}
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
        self.report.close()
        return TrainResult(self.iteration, last_saved, self.best, self.skipped_steps)

    def _target(self, batch: dict[str, Any], sharpened: bool) -> torch.Tensor:
        """The HR batch a loss compares with: the unsharp-masked HR when asked for and made, else the HR."""
        key = "gt_usm" if sharpened and "gt_usm" in batch else "gt"
        return batch[key].to(self.device, non_blocking=True)

    def _generator_loss(self, pred: torch.Tensor, batch: dict[str, Any], adversarial: bool) -> dict[str, torch.Tensor]:
        """The generator's named losses (pixel; perceptual/style with ``perceptual_opt``; adversarial when
        ``adversarial``) and their sum under ``"total"``."""
        usm = self.opts.usm
        parts = {"l_pix": self.loss_fn(pred, self._target(batch, usm.l1_gt_usm))}
        if self.perceptual is not None:
            percep, style = self.perceptual(pred, self._target(batch, usm.percep_gt_usm))
            parts.update({k: v for k, v in (("l_percep", percep), ("l_style", style)) if v is not None})
        if adversarial:
            # The discriminator's parameters are frozen here; its unwrapped module is used, so no DDP gradient
            # synchronisation is expected for them.
            parts["l_gan"] = self.gan_loss(self.disc(pred), True, is_disc=False)
        parts["total"] = sum(parts.values())
        return parts

    def step(self, batch: dict[str, Any], stop_requested: bool = False) -> tuple[float, bool, bool]:
        """One optimisation step; returns (mean generator loss over processes, whether it was finite, stop now).

        With ``network_d`` the generator is updated only when ``it % net_d_iters == 0 and it > net_d_init_iters``
        (``it`` the iteration being made; its loss is 0 otherwise), then the discriminator at every iteration.
        """
        t = self.opts.train
        it = self.iteration + 1
        update_g = self.disc is None or (it % t.net_d_iters == 0 and it > t.net_d_init_iters)
        lq = batch["lq"].to(self.device, non_blocking=True)
        if self.disc is not None:
            self.disc.requires_grad_(False)
        with self._autocast(), torch.set_grad_enabled(update_g):
            pred = self.net(lq)
        pred = pred.float()
        if update_g:
            parts = self._generator_loss(pred, batch, adversarial=self.disc is not None)
        else:
            parts = {"total": pred.new_zeros(())}
        loss = parts["total"]
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
            log.warning("iteration %d: non-finite loss in %d process(es); step skipped", it, int(nonfinite))
            if self.nonfinite_streak >= t.max_nonfinite_steps:
                raise TrainingError(
                    f"{self.nonfinite_streak} non-finite losses in a row at iteration {it}; "
                    f"the last good checkpoint is kept in {self.run_dir}"
                )
            self.scheduler.step()
            if self.scheduler_d is not None:
                self.scheduler_d.step()
            return float("nan"), False, stops > 0
        self.nonfinite_streak = 0
        if update_g:
            loss.backward()
            if t.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip_norm)
            self.optimizer.step()
            self.scheduler.step()
        else:  # the schedule counts iterations, as BasicSR's (torch warns when it steps with no optimizer step)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
                self.scheduler.step()
        log_values = {k: float(v.detach()) for k, v in parts.items() if k != "total"}
        if self.disc is not None:
            log_values.update(self._discriminator_step(pred.detach(), batch))
        if self.ema is not None:  # every iteration, as BasicSR
            self.ema.update_parameters(self.model)
        self.step_log = log_values
        return loss_sum / self.dist.world_size, True, stops > 0

    def _discriminator_step(self, fake: torch.Tensor, batch: dict[str, Any]) -> dict[str, float]:
        """One discriminator update on the HR batch (real) and the generator's output (fake); its named values.

        Real and fake go through the discriminator as one batch (one forward and one backward, which DDP
        synchronises once); BasicSR runs them one after the other, so its spectral norm makes two power
        iterations per step where this makes one. A non-finite loss on any process skips the update everywhere.
        """
        self.disc.requires_grad_(True)
        self.optimizer_d.zero_grad(set_to_none=True)
        real = self._target(batch, self.opts.usm.gan_gt_usm)
        logits = self.net_d(torch.cat([real, fake]))  # (2B, 1, H, W): the real batch, then the fake one
        real_logits, fake_logits = logits.split([real.shape[0], fake.shape[0]])
        l_real = self.gan_loss(real_logits, True, is_disc=True)
        l_fake = self.gan_loss(fake_logits, False, is_disc=True)
        loss = l_real + l_fake
        bad = (~torch.isfinite(loss.detach())).float().reshape(1)
        if self.dist.enabled:
            dist.all_reduce(bad)
        if bad.item():
            log.warning("iteration %d: non-finite discriminator loss; discriminator step skipped", self.iteration + 1)
        else:
            loss.backward()
            if self.opts.train.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.disc.parameters(), self.opts.train.grad_clip_norm)
            self.optimizer_d.step()
        self.scheduler_d.step()
        return {"l_d_real": float(l_real.detach()), "l_d_fake": float(l_fake.detach()),
                "out_d_real": float(real_logits.detach().mean()), "out_d_fake": float(fake_logits.detach().mean())}

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # ------------------------------------------------------------------ validation
    def eval_model(self) -> SST:
        """The weights that are validated and exported: the EMA when kept, else the trained ones."""
        return self.ema.module if self.ema is not None else self.model

    def validate(self) -> dict[str, dict[str, float]]:
        """Metrics of ``val.metrics`` on every validation set (rank 0 computes; the others wait)."""
        results: dict[str, dict[str, float]] = {}
        if self.dist.is_main and self.opts.val is not None:
            for key, values in validation_sets(self.eval_model(), self.val_sets, self.opts.val, self.device):
                results[key] = values
                name = self.opts.val_data[key].name
                self.report.validation(self.iteration, name, values)
                update_best(self.best, name, values, self.opts.val.metrics, self.iteration)
        if self.dist.enabled:
            dist.barrier()
        return results
