"""The losses of the GAN stage: BasicSR's ``GANLoss`` and ``PerceptualLoss`` (on a VGG feature extractor).

No feature-network weights ship with ribsr and nothing is downloaded: :class:`VGGFeatureExtractor` reads a VGG
state dict in torchvision's layout (``features.N.weight`` / ``features.N.bias``; other keys, such as
``classifier.*``, are ignored) from the file that ``train.perceptual_opt.weights`` names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "GAN_TYPES", "VGG_TYPES", "GANLoss", "PerceptualLoss", "VGGFeatureExtractor", "VGGWeightsError", "vgg_layer_names",
]

GAN_TYPES = ("vanilla", "lsgan", "wgan", "wgan_softplus", "hinge")

# Convolutions per block of each VGG (blocks of 64, 128, 256, 512, 512 channels, each ending in a max pool).
VGG_TYPES: dict[str, tuple[int, ...]] = {
    "vgg11": (1, 1, 2, 2, 2),
    "vgg13": (2, 2, 2, 2, 2),
    "vgg16": (2, 2, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4),
}
_VGG_CHANNELS = (64, 128, 256, 512, 512)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGGWeightsError(ValueError):
    """The VGG weights file cannot be read or does not fit the VGG asked for."""


def vgg_layer_names(vgg_type: str) -> list[str]:
    """The names of the layers of ``features`` in index order, as BasicSR's ``VGGFeatureExtractor`` has them
    (``conv1_1``, ``relu1_1``, ..., ``pool1``, ``conv2_1``, ...)."""
    names: list[str] = []
    for block, n in enumerate(VGG_TYPES[vgg_type], start=1):
        for i in range(1, n + 1):
            names += [f"conv{block}_{i}", f"relu{block}_{i}"]
        names.append(f"pool{block}")
    return names


class VGGFeatureExtractor(nn.Module):
    """The named layer outputs of a frozen VGG (``layers``: names of :func:`vgg_layer_names`), for images in [0, 1].

    ``conv*`` outputs are taken before their ReLU. ``use_input_norm`` normalises the input with ImageNet's mean
    and std; ``range_norm`` first maps [-1, 1] to [0, 1]. Only the layers up to the deepest one asked for are
    built. The module stays in eval mode and its parameters need no gradients.
    """

    def __init__(self, layers: Sequence[str], vgg_type: str = "vgg19", use_input_norm: bool = True,
                 range_norm: bool = False) -> None:
        super().__init__()
        if vgg_type not in VGG_TYPES:
            raise ValueError(f"vgg_type must be one of {list(VGG_TYPES)}, got {vgg_type!r}")
        names = vgg_layer_names(vgg_type)
        unknown = [n for n in layers if n not in names]
        if unknown or not layers:
            raise ValueError(f"layers must be names of {vgg_type}'s layers ({', '.join(names)}), got {list(layers)}")
        self.vgg_type = vgg_type
        self.layers = tuple(layers)
        self.use_input_norm = use_input_norm
        self.range_norm = range_norm
        last = max(names.index(n) for n in layers)
        modules: list[nn.Module] = []
        channels, block = 3, 0
        for name in names[: last + 1]:
            if name.startswith("conv"):
                block = int(name[4]) - 1
                modules.append(nn.Conv2d(channels, _VGG_CHANNELS[block], 3, 1, 1))
                channels = _VGG_CHANNELS[block]
            elif name.startswith("relu"):
                modules.append(nn.ReLU())
            else:
                modules.append(nn.MaxPool2d(2, 2))
        self.names = tuple(names[: last + 1])
        self.features = nn.Sequential(*modules)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGGFeatureExtractor:
        """Always eval mode (the extractor is frozen)."""
        return super().train(False)

    def load_weights(self, path: str | Path) -> None:
        """Read ``features.N.weight`` / ``features.N.bias`` from a torchvision-layout VGG state dict file (keys
        beyond the layers built are ignored)."""
        path = Path(path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise VGGWeightsError(f"{path}: no such file") from None
        except Exception as exc:  # truncated or foreign files raise many types
            raise VGGWeightsError(f"{path}: cannot be read as a state dict ({type(exc).__name__}: {exc})") from None
        if not isinstance(state, Mapping):
            raise VGGWeightsError(f"{path}: holds a {type(state).__name__}, not a state dict")
        self.load_features(state, source=str(path))

    def load_features(self, state: Mapping[str, torch.Tensor], source: str = "the VGG state dict") -> None:
        """Copy ``features.N.*`` tensors of ``state`` (torchvision's layout) into the layers built."""
        own = {k.removeprefix("features."): v for k, v in state.items()
               if isinstance(k, str) and k.startswith("features.")}
        problems: list[str] = []
        for key, param in self.features.state_dict().items():
            got = own.get(key)
            if got is None:
                problems.append(f"missing features.{key} ({self.names[int(key.split('.')[0])]})")
            elif not isinstance(got, torch.Tensor) or got.shape != param.shape:
                shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
                problems.append(f"features.{key} has shape {shape}, {self.vgg_type} needs {tuple(param.shape)}")
        if problems:
            more = f" (and {len(problems) - 6} more)" if len(problems) > 6 else ""
            raise VGGWeightsError(f"{source} does not fit {self.vgg_type} in torchvision's layout: "
                                  f"{'; '.join(problems[:6])}{more}")
        with torch.no_grad():
            for key, param in self.features.state_dict().items():
                param.copy_(own[key])

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x``: (N, 3, H, W) -> {layer name: (N, C, h, w)} for the layers asked for."""
        if self.range_norm:
            x = (x + 1) / 2
        if self.use_input_norm:
            x = (x - self.mean) / self.std
        out: dict[str, torch.Tensor] = {}
        for name, layer in zip(self.names, self.features, strict=True):
            x = layer(x)
            if name in self.layers:
                out[name] = x
        return out


def _gram(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    f = x.reshape(n, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)  # (N, C, C)


class PerceptualLoss(nn.Module):
    """BasicSR's perceptual and style losses: weighted distances of VGG features (and of their Gram matrices).

    ``criterion``: ``l1``, ``l2`` (mean squared error) or ``fro`` (Frobenius norm). Returns
    ``(perceptual, style)``, each None when its weight is 0.
    """

    def __init__(self, extractor: VGGFeatureExtractor, layer_weights: Mapping[str, float],
                 perceptual_weight: float = 1.0, style_weight: float = 0.0, criterion: str = "l1") -> None:
        super().__init__()
        if criterion not in ("l1", "l2", "fro"):
            raise ValueError(f"criterion must be l1, l2 or fro, got {criterion!r}")
        self.vgg = extractor
        self.layer_weights = dict(layer_weights)
        self.perceptual_weight = perceptual_weight
        self.style_weight = style_weight
        self.criterion = criterion

    def _distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.criterion == "fro":
            return torch.linalg.vector_norm(a - b)
        return F.l1_loss(a, b) if self.criterion == "l1" else F.mse_loss(a, b)

    def forward(self, x: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``x``, ``gt``: (N, 3, H, W) -> (perceptual loss, style loss)."""
        fx = self.vgg(x)
        fg = self.vgg(gt.detach())
        percep = style = None
        if self.perceptual_weight > 0:
            percep = sum(self._distance(fx[k], fg[k]) * w for k, w in self.layer_weights.items())
            percep = percep * self.perceptual_weight
        if self.style_weight > 0:
            style = sum(self._distance(_gram(fx[k]), _gram(fg[k])) * w for k, w in self.layer_weights.items())
            style = style * self.style_weight
        return percep, style


class GANLoss(nn.Module):
    """BasicSR's ``GANLoss``: the adversarial loss of discriminator logits for ``gan_type``.

    ``vanilla``: binary cross-entropy with logits against ``real_label_val`` / ``fake_label_val``; ``lsgan``:
    mean squared error against them; ``wgan``: -mean (real) / mean (fake); ``wgan_softplus``: mean softplus(-x)
    (real) / mean softplus(x) (fake); ``hinge``: mean relu(1 - x) (real) / mean relu(1 + x) (fake) for the
    discriminator and -mean(x) for the generator. The generator's loss (``is_disc`` False) is scaled by
    ``loss_weight``; the discriminator's is not.
    """

    def __init__(self, gan_type: str, real_label_val: float = 1.0, fake_label_val: float = 0.0,
                 loss_weight: float = 1.0) -> None:
        super().__init__()
        if gan_type not in GAN_TYPES:
            raise ValueError(f"gan_type must be one of {list(GAN_TYPES)}, got {gan_type!r}")
        self.gan_type = gan_type
        self.real_label_val = real_label_val
        self.fake_label_val = fake_label_val
        self.loss_weight = loss_weight

    def forward(self, pred: torch.Tensor, target_is_real: bool, is_disc: bool = False) -> torch.Tensor:
        """The loss of logits ``pred`` (any shape) taken as real or fake."""
        t = self.gan_type
        if t == "hinge":
            if is_disc:
                loss = F.relu(1 - pred if target_is_real else 1 + pred).mean()
            else:
                loss = -pred.mean()
        elif t == "wgan":
            loss = -pred.mean() if target_is_real else pred.mean()
        elif t == "wgan_softplus":
            loss = F.softplus(-pred).mean() if target_is_real else F.softplus(pred).mean()
        else:
            label = torch.full_like(pred, self.real_label_val if target_is_real else self.fake_label_val)
            loss = F.binary_cross_entropy_with_logits(pred, label) if t == "vanilla" else F.mse_loss(pred, label)
        return loss if is_disc else loss * self.loss_weight
