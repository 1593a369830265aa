"""Training option files: the paper's BasicSR-style YAML, read into typed, validated, frozen dataclasses.

:func:`load_options` reads an option file as the paper wrote it (``name``, ``scale``, ``manual_seed``,
``network_g``, ``datasets.train`` and ``datasets.val_*``, ``train``, ``val``, ``logger``, ``path``), applies
``--set KEY=VALUE`` overrides, and reports every problem of the file in one :class:`OptionsError`, each with
its dotted key path, before any work starts. Keys that only steer BasicSR's own machinery (``num_gpu``,
``dist_params``, ...) are accepted and named in one log notice.

Relative paths resolve against the option file's folder (after ``~`` and ``$VAR`` expansion). Files need not
exist when the options are read: :meth:`Options.missing_files` lists the missing ones for the trainer.

This module is the schema (the option blocks, their cross-checks, the network_g types of :data:`NETWORK_TYPES`);
:mod:`ribsr.train.convert` turns each block into its dataclass.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ribsr.config import ConfigError, ESCRIBConfig, SSTConfig
from ribsr.degrade import DEGRADATION_KEYS, DegradationError, DegradationOptions
from ribsr.errors import ProblemsError
from ribsr.safeyaml import BoundedLoader, YAMLFileError, load_yaml_text, problem, read_text
from ribsr.train.convert import BAD, BlockCheck, Context, build, convert, option
from ribsr.train.losses import GAN_TYPES, VGG_TYPES, vgg_layer_names

log = logging.getLogger(__name__)

__all__ = [
    "DatasetOptions", "DiscriminatorOptions", "GANLossOptions", "IOBackendOptions", "LoggerOptions", "LossOptions",
    "MetricOptions", "OptimizerOptions", "Options", "OptionsError", "PathOptions", "PerceptualOptions",
    "SchedulerOptions", "TrainOptions", "ValOptions",
    "apply_overrides", "load_options", "options_from_dict",
]


class OptionsError(ProblemsError):
    """One or more problems in training options (all are listed, each with its key path)."""

    what = "invalid training options"


# ---------------------------------------------------------------------- the option blocks
@dataclass(frozen=True)
class IOBackendOptions:
    """How a dataset's images are read: ``disk`` (files), ``lmdb`` (a BasicSR LMDB) or ``memory`` (decoded once)."""

    type: str = option("disk", choices=("disk", "lmdb", "memory"))


@dataclass(frozen=True)
class DatasetOptions:
    """One ``datasets.*`` block: where the images are and how batches are drawn from them.

    ``PairedImageDataset`` pairs HR images with pre-made LR ones (``dataroot_lq``, names via ``filename_tmpl``);
    ``DownsampleImageDataset`` makes the LR of each HR crop on the fly with bicubic ``imresize``,
    ``RealESRGANDataset`` with Real-ESRGAN's second-order degradation (``Options.degradation``). ``gt_size`` is
    the HR patch size of training crops (required for ``datasets.train``).
    """

    name: str
    type: str = option(choices=("PairedImageDataset", "DownsampleImageDataset", "RealESRGANDataset"))
    dataroot_gt: Path = option()
    dataroot_lq: Path | None = None
    meta_info_file: Path | None = None
    filename_tmpl: str = "{}"
    io_backend: IOBackendOptions = IOBackendOptions()
    gt_size: int | None = option(None, gt=0)
    use_hflip: bool = False
    use_rot: bool = False
    use_shuffle: bool = True
    num_worker_per_gpu: int = option(0, ge=0)
    batch_size_per_gpu: int = option(1, gt=0)
    dataset_enlarge_ratio: int = option(1, gt=0)


@dataclass(frozen=True)
class OptimizerOptions:
    """``train.optim_g`` (or ``train.optim_d``): the optimizer of the network (of the discriminator)."""

    type: str = option(choices=("Adam", "AdamW"))
    lr: float = option(gt=0)
    weight_decay: float = option(0.0, ge=0)
    betas: tuple[float, float] = option((0.9, 0.999), ge=0, lt=1)
    eps: float = option(1e-8, gt=0)


# The keys each scheduler type uses (besides ``type``); the others must keep their defaults.
SCHEDULER_KEYS: dict[str, tuple[str, ...]] = {
    "MultiStepLR": ("milestones", "gamma", "restarts"),
    "CosineAnnealingRestartLR": ("periods", "restart_weights", "eta_min"),
    "CosineAnnealingLR": ("T_max", "eta_min"),
}


@dataclass(frozen=True)
class SchedulerOptions:
    """``train.scheduler``: the learning-rate schedule after the warm-up.

    ``MultiStepLR`` (BasicSR's ``MultiStepRestartLR`` without restarts) multiplies the rate by ``gamma`` at each
    of ``milestones`` (iterations counted from the start of the run). ``CosineAnnealingRestartLR`` runs one
    cosine per period of ``periods`` (down to ``eta_min``); ``CosineAnnealingLR`` one cosine over ``T_max``
    iterations (None: the iterations after the warm-up).
    """

    type: str = option(choices=tuple(SCHEDULER_KEYS), aliases={"MultiStepRestartLR": "MultiStepLR"})
    milestones: tuple[int, ...] = option((), gt=0)
    gamma: float = option(0.5, gt=0)
    periods: tuple[int, ...] = option((), gt=0)
    restart_weights: tuple[float, ...] = option((), ge=0)
    eta_min: float = option(0.0, ge=0)
    T_max: int | None = option(None, gt=0)
    restarts: tuple[int, ...] = option((), ge=0)


@dataclass(frozen=True)
class LossOptions:
    """``train.pixel_opt``: the pixel loss (``eps`` is Charbonnier's)."""

    type: str = option(choices=("L1Loss", "MSELoss", "CharbonnierLoss"))
    loss_weight: float = option(1.0, gt=0)
    reduction: str = option("mean", choices=("mean", "sum"))
    eps: float = option(1e-12, gt=0)


@dataclass(frozen=True)
class GANLossOptions:
    """``train.gan_opt``: BasicSR's ``GANLoss`` (``loss_weight`` scales the generator's loss only)."""

    type: str = option(choices=("GANLoss",))
    gan_type: str = option("vanilla", choices=GAN_TYPES)
    real_label_val: float = 1.0
    fake_label_val: float = 0.0
    loss_weight: float = option(1.0, gt=0)


@dataclass(frozen=True)
class PerceptualOptions:
    """``train.perceptual_opt``: BasicSR's ``PerceptualLoss`` on VGG features (``layer_weights`` by layer name,
    ``conv*`` taken before their ReLU). ``weights`` (ribsr's key, required): a VGG state dict file in torchvision's
    layout (``features.N.weight/bias``); ribsr ships none and downloads nothing."""

    type: str = option(choices=("PerceptualLoss",))
    layer_weights: dict[str, float] = option(ge=0)
    vgg_type: str = option("vgg19", choices=tuple(VGG_TYPES))
    use_input_norm: bool = True
    range_norm: bool = False
    perceptual_weight: float = option(1.0, ge=0)
    style_weight: float = option(0.0, ge=0)
    criterion: str = option("l1", choices=("l1", "l2", "fro"))
    weights: Path | None = None


@dataclass(frozen=True)
class TrainOptions:
    """The ``train`` block: optimizer, schedule, length, losses, EMA and the safety limits.

    ``warmup_iter`` -1 (or 0) means no warm-up; ``ema_decay`` 0 keeps no moving average. ``grad_clip_norm``
    (ribsr's key) clips the global gradient norm; ``max_nonfinite_steps`` (ribsr's key) non-finite losses in a
    row stop the run. The GAN stage (with a top-level ``network_d``) needs ``optim_d`` and ``gan_opt``; as in
    BasicSR the generator is updated at iterations t with ``t % net_d_iters == 0`` and ``t > net_d_init_iters``
    (the discriminator alone learns before), the discriminator at every iteration.
    """

    optim_g: OptimizerOptions
    scheduler: SchedulerOptions
    total_iter: int = option(gt=0)
    pixel_opt: LossOptions = option()
    ema_decay: float = option(0.0, ge=0, lt=1)
    warmup_iter: int = option(-1, ge=-1)
    grad_clip_norm: float | None = option(None, gt=0)
    max_nonfinite_steps: int = option(5, gt=0)
    perceptual_opt: PerceptualOptions | None = None
    optim_d: OptimizerOptions | None = None
    gan_opt: GANLossOptions | None = None
    net_d_iters: int = option(1, gt=0)
    net_d_init_iters: int = option(0, ge=0)


@dataclass(frozen=True)
class MetricOptions:
    """One ``val.metrics`` entry: PSNR or SSIM, with its border crop and colour space."""

    type: str = option(choices=("calculate_psnr", "calculate_ssim"),
                     aliases={"psnr": "calculate_psnr", "ssim": "calculate_ssim"})
    crop_border: int = option(0, ge=0)
    test_y_channel: bool = False
    better: str = option("higher", choices=("higher", "lower"))


@dataclass(frozen=True)
class ValOptions:
    """The ``val`` block: how often and how to validate. ``tile`` (ribsr's key): tile images larger than this."""

    val_freq: int = option(gt=0)
    metrics: dict[str, MetricOptions] = option()
    save_img: bool = False
    pbar: bool = False
    tile: int | None = option(None, gt=0)


@dataclass(frozen=True)
class LoggerOptions:
    """The ``logger`` block. ``keep_checkpoints`` (ribsr's key): how many checkpoints to keep (0: all)."""

    print_freq: int = option(100, gt=0)
    save_checkpoint_freq: int = option(5000, gt=0)
    use_tb_logger: bool = False
    keep_checkpoints: int = option(3, ge=0)


@dataclass(frozen=True)
class PathOptions:
    """The ``path`` block: weights to start from (the network's, the discriminator's), and a checkpoint to resume."""

    pretrain_network_g: Path | None = None
    strict_load_g: bool = True
    param_key_g: str = "params"
    resume_state: Path | None = None
    pretrain_network_d: Path | None = None
    strict_load_d: bool = True
    param_key_d: str = "params"


@dataclass(frozen=True)
class DiscriminatorOptions:
    """``network_d``: Real-ESRGAN's U-Net discriminator with spectral normalization (the GAN stage)."""

    type: str = option(choices=("UNetDiscriminatorSN",))
    num_in_ch: int = option(3, gt=0)
    num_feat: int = option(64, gt=0)
    skip_connection: bool = True


@dataclass(frozen=True)
class UsmOptions:
    """Real-ESRGAN's unsharp-masked targets: ``gt_usm`` degrades the sharpened HR and offers it as a target;
    ``l1_gt_usm`` / ``percep_gt_usm`` / ``gan_gt_usm`` pick it (else the HR itself) for the pixel, perceptual and
    GAN losses."""

    gt_usm: bool = False
    l1_gt_usm: bool = True
    percep_gt_usm: bool = True
    gan_gt_usm: bool = False


@dataclass(frozen=True)
class Options:
    """A whole option file, validated; ``raw`` is its resolved plain-dict form (saved in checkpoints).

    ``val_data`` holds every ``datasets.val*`` block in file order; ``val`` is None when the file has no
    ``val`` block. Build with :func:`load_options` or :func:`options_from_dict`, which check everything.
    """

    name: str
    scale: int
    network: SSTConfig | ESCRIBConfig
    train_data: DatasetOptions
    val_data: dict[str, DatasetOptions]
    train: TrainOptions
    val: ValOptions | None
    logger: LoggerOptions
    path: PathOptions
    manual_seed: int = 0
    degradation: DegradationOptions | None = None
    usm: UsmOptions = UsmOptions()
    network_d: DiscriminatorOptions | None = None
    source: Path | None = field(default=None, compare=False)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.raw:
            object.__setattr__(self, "raw", self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """The options as a plain dict in the option file's layout (loadable again, YAML- and checkpoint-safe)."""
        out: dict[str, Any] = {
            "name": self.name,
            "scale": self.scale,
            "manual_seed": self.manual_seed,
            "network_g": self.network.to_network_g(),
            **({} if self.network_d is None else {"network_d": _plain(self.network_d)}),
            "datasets": {"train": _plain(self.train_data), **{k: _plain(v) for k, v in self.val_data.items()}},
            "train": _plain(self.train),
        }
        if self.degradation is not None:
            out["degradation"] = self.degradation.to_dict()
        if self.usm != UsmOptions():
            out.update(_plain(self.usm))
        if self.val is not None:
            out["val"] = _plain(self.val)
        out["logger"] = _plain(self.logger)
        out["path"] = _plain(self.path)
        return out

    def missing_files(self) -> list[str]:
        """Problems with the files the options name: data folders and files, pretrained weights and
        ``resume_state`` that do not exist (empty when all are there)."""
        out: list[str] = []

        def need(path: Path | None, key: str, is_file: bool) -> None:
            if path is None:
                return
            if not path.exists():
                out.append(f"{key}: not found: {path}")
            elif is_file and not path.is_file():
                out.append(f"{key}: not a file: {path}")

        for key, ds in (("train", self.train_data), *self.val_data.items()):
            need(ds.dataroot_gt, f"datasets.{key}.dataroot_gt", False)
            need(ds.dataroot_lq, f"datasets.{key}.dataroot_lq", False)
            need(ds.meta_info_file, f"datasets.{key}.meta_info_file", True)
        need(self.path.pretrain_network_g, "path.pretrain_network_g", True)
        need(self.path.pretrain_network_d, "path.pretrain_network_d", True)
        if self.train.perceptual_opt is not None:
            need(self.train.perceptual_opt.weights, "train.perceptual_opt.weights", True)
        need(self.path.resume_state, "path.resume_state", True)
        return out

    def check_files(self) -> None:
        """Raise :class:`OptionsError` listing :meth:`missing_files`, if any."""
        missing = self.missing_files()
        if missing:
            raise OptionsError(missing, self.source)


# Keys of the GAN stage left out of the plain form while they keep their defaults (files without a GAN stage
# read back as they were written).
_OMIT_DEFAULT: dict[type, tuple[str, ...]] = {
    TrainOptions: ("perceptual_opt", "optim_d", "gan_opt", "net_d_iters", "net_d_init_iters"),
    PathOptions: ("pretrain_network_d", "strict_load_d", "param_key_d"),
}


def _plain(obj: Any) -> Any:
    """A dataclass, tuple, Path or dict as plain YAML-able data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        omit = _OMIT_DEFAULT.get(type(obj), ())
        names = [f.name for f in dataclasses.fields(obj)
                 if f.name not in omit or getattr(obj, f.name) != f.default]
        if isinstance(obj, SchedulerOptions):
            used = SCHEDULER_KEYS[obj.type]
            names = ["type", *(n for n in names if n in used)]
            if obj.type == "MultiStepLR":
                names.remove("restarts")  # always empty once validated
        return {n: _plain(getattr(obj, n)) for n in names}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (tuple, list)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


# ---------------------------------------------------------------------- keys BasicSR needs and we do not
_IGNORED_TOP = frozenset({"num_gpu", "dist_params", "model_type", "is_train", "dist", "rank", "world_size",
                          "auto_resume", "queue_size", "high_order_degradation"})
_IGNORED_IN: dict[type, frozenset[str]] = {
    DatasetOptions: frozenset({"prefetch_mode", "pin_memory", "phase", "color"}),
    LoggerOptions: frozenset({"wandb"}),
    PathOptions: frozenset({"experiments_root", "models", "training_states", "log", "visualization", "root",
                            "results_root"}),
}
# Top-level keys besides Real-ESRGAN's degradation keys (ribsr.degrade.DEGRADATION_KEYS), which stand at the top of
# its option files, in a ``degradation`` block or (the kernels') in ``datasets.train``: any of them in any of the
# three places, once.
_TOP_KEYS = ("name", "scale", "manual_seed", "network_g", "network_d", "datasets", "train", "val", "logger", "path",
             "degradation", "gt_size", *(f.name for f in dataclasses.fields(UsmOptions)))


# ---------------------------------------------------------------------- checks of whole blocks
def _check_dataset(d: DatasetOptions, path: str, ctx: Context) -> DatasetOptions:
    if d.type == "PairedImageDataset" and d.dataroot_lq is None:
        ctx.problem(f"{path}.dataroot_lq", "missing (PairedImageDataset reads its LR images there)")
    if d.type == "DownsampleImageDataset" and d.dataroot_lq is not None:
        ctx.problem(f"{path}.dataroot_lq", "not used by DownsampleImageDataset (it makes the LR images); remove it")
    try:
        d.filename_tmpl.format("name")
        ok = "{}" in d.filename_tmpl
    except (IndexError, KeyError, ValueError):
        ok = False
    if not ok:
        ctx.problem(f"{path}.filename_tmpl", f"must hold one '{{}}' for the HR name, got {d.filename_tmpl!r}")
    return d


def _check_scheduler(s: SchedulerOptions, path: str, ctx: Context) -> SchedulerOptions:
    if s.type == "MultiStepLR":
        if s.restarts not in ((), (0,)):
            ctx.problem(f"{path}.restarts", f"restarts are not supported (only [] or [0]), got {list(s.restarts)}")
        if s.restart_weights not in ((), (1.0,)):
            ctx.problem(f"{path}.restart_weights",
                        f"restarts are not supported (only [] or [1]), got {list(s.restart_weights)}")
        s = dataclasses.replace(s, restarts=(), restart_weights=())
        if any(b <= a for a, b in zip(s.milestones, s.milestones[1:], strict=False)):
            ctx.problem(f"{path}.milestones", f"must be increasing, got {list(s.milestones)}")
    if s.type == "CosineAnnealingRestartLR":
        if not s.periods:
            ctx.problem(f"{path}.periods", "missing (CosineAnnealingRestartLR needs the length of each cosine)")
        if s.restart_weights and len(s.restart_weights) != len(s.periods):
            ctx.problem(f"{path}.restart_weights", f"must have one weight per period ({len(s.periods)}), "
                        f"got {list(s.restart_weights)}")
        elif any(w != 1 for w in s.restart_weights):
            ctx.problem(f"{path}.restart_weights", f"only restarts to the full learning rate (1) are supported, "
                        f"got {list(s.restart_weights)}")
    defaults = SchedulerOptions(type=s.type)
    for f in dataclasses.fields(s):
        unused = f.name != "type" and f.name not in SCHEDULER_KEYS[s.type]
        if unused and getattr(s, f.name) != getattr(defaults, f.name):
            ctx.problem(f"{path}.{f.name}", f"not used by {s.type}")
    return s


def _check_train(t: TrainOptions, path: str, ctx: Context) -> TrainOptions:
    warmup = max(t.warmup_iter, 0)
    s, where = t.scheduler, f"{path}.scheduler"
    # Warm-up, milestones and periods may reach past total_iter: a run stopped early (total_iter=k) and
    # continued to n with --resume follows the schedule of the run to n.
    if s.type == "MultiStepLR" and s.milestones:
        if s.milestones[0] <= warmup:
            ctx.problem(f"{where}.milestones", f"must lie after warmup_iter ({warmup}), got {list(s.milestones)}")
    if s.type == "CosineAnnealingRestartLR" and s.periods and sum(s.periods) < t.total_iter - warmup:
        ctx.problem(f"{where}.periods", f"must cover the iterations after warm-up, total_iter - warmup_iter "
                    f"({t.total_iter - warmup}), got {list(s.periods)} (sum {sum(s.periods)})")
    return t


def _check_perceptual(p: PerceptualOptions, path: str, ctx: Context) -> PerceptualOptions:
    if p.weights is None:
        ctx.problem(f"{path}.weights", "missing: the perceptual loss needs the weights of its feature network, a "
                    f"{p.vgg_type} state dict file in torchvision's layout (features.N.weight/bias); ribsr ships none "
                    "and downloads nothing")
    names = vgg_layer_names(p.vgg_type)
    if not p.layer_weights:
        ctx.problem(f"{path}.layer_weights", "must name at least one layer (e.g. conv5_4: 1)")
    for layer in p.layer_weights:
        if layer not in names:
            ctx.problem(f"{path}.layer_weights.{layer}", f"not a layer of {p.vgg_type} (its layers: "
                        f"{', '.join(names)})")
    if p.perceptual_weight == 0 and p.style_weight == 0:
        ctx.problem(f"{path}.perceptual_weight", "perceptual_weight and style_weight are both 0: the loss is 0 "
                    "(remove perceptual_opt)")
    return p


def _check_val(v: ValOptions, path: str, ctx: Context) -> ValOptions:
    if not v.metrics:
        ctx.problem(f"{path}.metrics", "must name at least one metric (e.g. psnr: {type: calculate_psnr})")
    return v


_CHECKS: dict[type, BlockCheck] = {
    DatasetOptions: _check_dataset,
    SchedulerOptions: _check_scheduler,
    TrainOptions: _check_train,
    ValOptions: _check_val,
    PerceptualOptions: _check_perceptual,
}


# ---------------------------------------------------------------------- the whole file
# The network_g types an option file may name, each with the reader of its block (which raises ConfigError listing
# the block's problems); an option file's network_g type not named here is a problem.
NETWORK_TYPES: dict[str, Callable[[Mapping[str, Any]], SSTConfig | ESCRIBConfig]] = {
    "SST": SSTConfig.from_network_g, "ESCRIB": ESCRIBConfig.from_network_g,
}


def _build_network(block: Any, scale: Any, ctx: Context) -> SSTConfig | ESCRIBConfig | None:
    if not isinstance(block, Mapping):
        ctx.problem("network_g", f"must be a mapping, got {block!r}")
        return None
    read = NETWORK_TYPES.get(block.get("type"))
    if read is None:
        ctx.problem("network_g.type", f"must be {' or '.join(map(repr, NETWORK_TYPES))}, got {block.get('type')!r}")
        return None
    block = dict(block)
    if "upscaling_factor" not in block and "scale" not in block and scale is not BAD:
        block["upscaling_factor"] = scale  # a network_g without a scale takes the file's
    try:
        return read(block)
    except ConfigError as exc:
        ctx.problems.extend(f"network_g: {p}" for p in exc.problems)
    except (TypeError, ValueError) as exc:
        ctx.problem("network_g", f"invalid ({exc})")
    return None


def _build_options(data: Mapping[str, Any], ctx: Context, source: Path | None) -> Options | None:
    for key in data:
        if key in _IGNORED_TOP:
            ctx.ignored.append(str(key))
        elif key not in _TOP_KEYS and key not in DEGRADATION_KEYS:
            ctx.problem(str(key), f"unknown key (known: {', '.join(_TOP_KEYS)}, and Real-ESRGAN's degradation keys)")

    def top(key: str, tp: Any, default: Any = MISSING, **meta: Any) -> Any:
        if key not in data:
            if default is MISSING:
                ctx.problem(key, "missing")
                return BAD
            return default
        return convert(data[key], tp, meta, key, ctx)

    name = top("name", str)
    if isinstance(name, str) and (not name.strip() or "/" in name or "\\" in name):
        ctx.problem("name", f"must be a non-empty name without path separators (it names the run), got {name!r}")
    scale = top("scale", int, gt=0)
    manual_seed = top("manual_seed", int, 0, ge=0)
    network = _build_network(data["network_g"], scale, ctx)
    if network is not None and scale is not BAD and network.scale != scale:
        ctx.problem("scale", f"must equal network_g.upscaling_factor ({network.scale}), got {scale}")

    train_data: Any = BAD
    val_data: dict[str, Any] = {}
    datasets = data.get("datasets")
    if not isinstance(datasets, Mapping):
        ctx.problem("datasets", "missing" if datasets is None else f"must be a mapping, got {datasets!r}")
    else:
        for key, block in datasets.items():
            if isinstance(block, Mapping) and "meta_info" in block and "meta_info_file" not in block:
                block = {("meta_info_file" if k == "meta_info" else k): v for k, v in block.items()}  # Real-ESRGAN's
            if key == "train":
                if isinstance(block, Mapping):  # the kernels' keys are read with the degradation's
                    block = {k: v for k, v in block.items() if k not in DEGRADATION_KEYS}
                train_data = build(DatasetOptions, block, "datasets.train", ctx)
            elif isinstance(key, str) and (key == "val" or key.startswith("val_")):
                val_data[key] = build(DatasetOptions, block, f"datasets.{key}", ctx)
            else:
                ctx.problem(f"datasets.{key}", "unknown dataset key (use 'train', and 'val_1', 'val_2', ...)")
        if "train" not in datasets:
            ctx.problem("datasets.train", "missing")
    if train_data is not BAD:
        if train_data.gt_size is None:
            ctx.problem("datasets.train.gt_size", "missing (the HR patch size of training crops)")
        elif scale is not BAD and train_data.gt_size % scale:
            ctx.problem("datasets.train.gt_size", f"must be a multiple of scale ({scale}), got {train_data.gt_size}")

    if isinstance(data.get("gt_size"), int) and train_data is not BAD and data["gt_size"] != train_data.gt_size:
        ctx.problem("gt_size", f"must equal datasets.train.gt_size ({train_data.gt_size}), got {data['gt_size']!r}")
    degradation, usm = _build_degradation(data, train_data, scale, ctx)

    train = top("train", TrainOptions)
    network_d = None if data.get("network_d") is None else build(DiscriminatorOptions, data["network_d"], "network_d",
                                                                   ctx)
    _check_gan(data, network_d, train_data, ctx)
    val = None if data.get("val") is None else build(ValOptions, data["val"], "val", ctx)
    if val is not None and not val_data:
        ctx.problem("val", "validation is set up but datasets has no val_* dataset")
    if val is None and val_data:
        ctx.problem(f"datasets.{next(iter(val_data))}",
                    "a validation dataset is given but there is no val block (val_freq, metrics)")
    logger = LoggerOptions() if data.get("logger") is None else build(LoggerOptions, data["logger"], "logger", ctx)
    paths = PathOptions() if data.get("path") is None else build(PathOptions, data["path"], "path", ctx)

    if ctx.problems:
        return None
    return Options(name=name, scale=scale, network=network, train_data=train_data, val_data=val_data, train=train,
                   val=val, logger=logger, path=paths, manual_seed=manual_seed, degradation=degradation, usm=usm,
                   network_d=network_d, source=source)


def _check_gan(data: Mapping[str, Any], network_d: Any, train_data: Any, ctx: Context) -> None:
    """The GAN stage's keys go together: ``network_d`` needs ``train.optim_d`` and ``train.gan_opt``, and those (and
    ``path.pretrain_network_d``, ``train.net_d_*``) need ``network_d``. Read from the file's own blocks, so these
    problems are reported along with those inside the blocks."""
    train = data.get("train") if isinstance(data.get("train"), Mapping) else {}
    paths = data.get("path") if isinstance(data.get("path"), Mapping) else {}
    if data.get("network_d") is not None:
        for key, what in (("optim_d", "the discriminator's optimizer"), ("gan_opt", "the adversarial loss")):
            if train.get(key) is None:
                ctx.problem(f"train.{key}", f"missing ({what}; network_d is given)")
        if network_d is not BAD and network_d is not None and network_d.num_in_ch != 3:
            ctx.problem("network_d.num_in_ch", f"must be 3 (the network's RGB output), got {network_d.num_in_ch}")
        if train_data is not BAD and train_data.gt_size is not None and train_data.gt_size % 8:
            ctx.problem("datasets.train.gt_size", f"must be a multiple of 8 for network_d (its U-Net halves the "
                        f"crop three times), got {train_data.gt_size}")
        return
    given = [f"train.{k}" for k in ("optim_d", "gan_opt", "net_d_iters", "net_d_init_iters")
             if train.get(k) is not None]
    given += ["path.pretrain_network_d"] if paths.get("pretrain_network_d") is not None else []
    for key in given:
        ctx.problem(key, "needs network_d (the discriminator of the GAN stage)")


def _build_degradation(data: Mapping[str, Any], train_data: Any, scale: Any,
                       ctx: Context) -> tuple[DegradationOptions | None, UsmOptions]:
    """The degradation of a ``RealESRGANDataset`` run, gathered from the top level, the ``degradation`` block and
    ``datasets.train``, and its USM options; None without such a dataset (then no degradation key may be given)."""
    from ribsr.degrade import gather_degradation_keys

    usm_values: dict[str, Any] = {k: data[k] for k in ("gt_usm", "l1_gt_usm", "percep_gt_usm", "gan_gt_usm")
                                  if k in data}
    values, where, gathered = gather_degradation_keys(data)  # top level, degradation block, datasets.train
    ctx.problems.extend(gathered)
    block = data.get("degradation")
    if block is not None:
        if isinstance(block, Mapping):
            if "sf" in block and block["sf"] != scale:
                ctx.problem("degradation.sf", f"must equal scale ({scale}), got {block['sf']!r}")
            if "gt_size" in block and train_data is not BAD and block["gt_size"] != train_data.gt_size:
                ctx.problem("degradation.gt_size", f"must equal datasets.train.gt_size ({train_data.gt_size}), "
                            f"got {block['gt_size']!r}")
            if block.get("resize_back"):
                ctx.problem("degradation.resize_back", "resizing the LR back to the HR size is not supported")
            if "use_sharp" in block:
                usm_values.setdefault("gt_usm", block["use_sharp"])
    for key, value in list(usm_values.items()):
        if not isinstance(value, bool):
            ctx.problem("degradation.use_sharp" if key == "gt_usm" and "gt_usm" not in data else key,
                        f"must be true or false, got {value!r}")
            del usm_values[key]
    usm = UsmOptions(**usm_values)
    is_real = train_data is not BAD and train_data.type == "RealESRGANDataset"
    if not is_real:
        if values or block is not None or usm.gt_usm:
            given = sorted(where.values()) or ["degradation" if block is not None else "gt_usm"]
            ctx.problem(given[0], "degradation options need datasets.train.type: RealESRGANDataset")
        return None, usm
    try:
        return DegradationOptions.from_mapping(
            {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}), usm
    except DegradationError as exc:
        for problem in exc.problems:
            key, _, message = problem.partition(": ")
            ctx.problem(where.get(key, key), message)
        return None, usm


# ---------------------------------------------------------------------- overrides
def _plain_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_copy(v) for v in value]
    return copy.deepcopy(value)


def _apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    result = _plain_copy(data)
    problems: list[str] = []
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            problems.append(f"--set {item!r}: expected KEY=VALUE (e.g. train.total_iter=1000)")
            continue
        key, _, text = item.partition("=")
        parts = key.strip().split(".")
        if not key.strip() or any(not p.strip() for p in parts):
            problems.append(f"--set {item!r}: malformed key {key!r} (dotted names, e.g. datasets.train.gt_size)")
            continue
        parts = [p.strip() for p in parts]
        try:
            value = load_yaml_text(text)  # bounded, as the file is
        except (yaml.YAMLError, ValueError, RecursionError) as exc:
            problems.append(f"--set {item!r}: the value is not valid YAML ({str(exc).splitlines()[0]})")
            continue
        node = result
        for i, part in enumerate(parts[:-1]):
            if node.get(part) is None:
                node[part] = {}
            elif not isinstance(node[part], dict):
                problems.append(f"--set {item!r}: {'.'.join(parts[:i + 1])} is not a mapping (it holds {node[part]!r})")
                break
            node = node[part]
        else:
            node[parts[-1]] = value
    return result, problems


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``data`` with ``KEY=VALUE`` items set (dotted key paths, values in YAML; missing mappings made)."""
    result, problems = _apply_overrides(data, overrides)
    if problems:
        raise OptionsError(problems)
    return result


# ---------------------------------------------------------------------- entry points
def _from_data(data: Any, source: Path | None, base_dir: Path, overrides: Sequence[str],
               early: Sequence[str] = ()) -> Options:
    if not isinstance(data, Mapping):
        what = "nothing (an empty file)" if data is None else type(data).__name__
        raise OptionsError([f"the options must be a mapping, got {what}"], source)
    data, problems = _apply_overrides(data, overrides)
    if data.get("network_g") is None:
        raise OptionsError([*early, *problems, "network_g: missing (this does not look like a training option file)"],
                           source)
    ctx = Context(base_dir=base_dir, checks=_CHECKS, ignorable=_IGNORED_IN, problems=[*early, *problems])
    opts = _build_options(data, ctx, source)
    if ctx.ignored:
        log.info("ignored BasicSR keys%s: %s", f" in {source}" if source else "", ", ".join(ctx.ignored))
    if opts is None:
        raise OptionsError(ctx.problems, source)
    return opts


def options_from_dict(data: Mapping[str, Any], *, source: str | Path | None = None, base_dir: Path | None = None,
                      overrides: Sequence[str] = ()) -> Options:
    """Validated :class:`Options` from an option file's contents.

    Relative paths resolve against ``base_dir`` (default: the folder of ``source`` when given, else the
    current folder). Raises :class:`OptionsError` listing every problem.
    """
    src = Path(source) if source is not None else None
    if base_dir is None:
        base_dir = src.parent if src is not None else Path.cwd()
    return _from_data(data, src, Path(os.path.abspath(base_dir)), overrides)


class _Loader(BoundedLoader):
    """PyYAML's safe loader, bounded (:class:`~ribsr.safeyaml.BoundedLoader`), that records duplicate keys
    (PyYAML keeps the last one silently)."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.duplicates: list[str] = []


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
            continue
        key = loader.construct_object(key_node)
        if key in seen:
            loader.duplicates.append(f"duplicate key {key!r} (line {key_node.start_mark.line + 1}); "
                                     "only its last value would count")
        seen.add(key)
    loader.flatten_mapping(node)
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_options(path: str | Path, overrides: Sequence[str] = ()) -> Options:
    """Read and validate a BasicSR-style option file, with ``--set KEY=VALUE`` overrides applied.

    Raises :class:`OptionsError` naming the file and listing every problem.
    """
    path = Path(path)
    try:
        text = read_text(path, "option file")  # bounded in size; binary files named
    except YAMLFileError as exc:
        raise OptionsError([exc.detail], path) from None
    except FileNotFoundError:
        raise OptionsError(["cannot read the file (it does not exist)"], path) from None
    loader: _Loader | None = None
    try:
        loader = _Loader(text)  # bounded: an alias bomb is refused before any value is built
        data = loader.get_single_data()
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        raise OptionsError([problem(exc, "option file") or str(exc)], path) from None
    finally:
        if loader is not None:
            loader.dispose()
    return _from_data(data, path, Path(os.path.abspath(path.parent)), overrides, loader.duplicates)
