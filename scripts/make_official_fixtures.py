"""Make reference fixtures by running the paper's own SST code as an oracle.

The paper's code is *not* part of this repository: point ``--sst-root`` at a directory from which
its ``SST`` class can be imported (see ``--sst-module``), with ``einops`` and a ``basicsr`` package
(the real one, or stubs of ``basicsr.utils.registry.ARCH_REGISTRY`` and
``basicsr.utils.get_root_logger``) importable.

For every case below the script builds the paper's ``SST`` under ``torch.manual_seed``, adds small
normal noise to every parameter (so that no parameter, biases included, is zero), and writes

* ``{case}.pth``: ``{'params_ema': state_dict}`` (the released checkpoints' format);
* ``{case}_io.pt``: ``{'input', 'output'}``: a fixed random input in [0, 1] and the oracle's output;
* ``cases.json``: per case its ``network_g``, the shapes, the checkpoint file, and for information
  how far the paper's unpatched attention (bfloat16) is from the oracle's output.

The oracle is the paper's code with one change: ``WindowAttention2D._flash_cat_attn`` (the RIB
attention, which casts q, k, v to bfloat16) is replaced by the same computation in float64
(:func:`exact_cat_attention`), so the fixtures hold what the architecture computes, not the
rounding of one kernel. Scale-change cases load another case's checkpoint into a model of a
different scale through the paper's own ``load_state_dict`` (which resizes the upsampler).

``--verify DIR`` instead runs the oracle on an existing fixture directory (same layout) and
reports the largest difference from its stored outputs.

``--arch escrib`` does the same for the paper's second RIB network, ``ESCRIB`` (imported from
``--escrib-module``; cases in ``ESCRIB_CASES``). There the perturbation also redraws the
zero-initialised last conv of every ``dwc_proj`` (the dynamic 3x3 kernel), checkpoints are saved
before ``convert()`` (as training writes them) except for cases marked ``converted`` (saved after
``convert()``: the large-kernel filter already geometrically folded), outputs are the eval path's
(the training path's where ``output_mode`` is ``train``: the paper's eval path only takes batch 1),
and ``cases.json`` also records how far the eval and training paths are apart and how much the
dynamic-kernel branch and the geometric fold change the output (so a fixture can tell them apart).

Usage::

    python scripts/make_official_fixtures.py --sst-root /path/to/paper-code --out tests/fixtures/official
    python scripts/make_official_fixtures.py --sst-root /path/to/paper-code --verify ../shared/fixtures/official-sst
    python scripts/make_official_fixtures.py --arch escrib --sst-root /path/to/paper-code \
        --escrib-module sst_official.esc_rib_arch --out tests/fixtures/official-escrib
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

# Modules tried in turn when --sst-module is not given (where the paper's SST may live).
DEFAULT_MODULES = ("basicsr.archs.sst_arch", "sst_official.sst_arch", "sst_arch")
# The same for --escrib-module (where the paper's ESCRIB may live).
DEFAULT_ESCRIB_MODULES = ("basicsr.archs.esc_rib_arch", "sst_official.esc_rib_arch", "esc_rib_arch")
NOISE_STD = 0.05
# Attention parameters are redrawn larger than their initialisation (std of the noise added on top):
# at init the content and RIB logits are ~0.01-0.1, the softmax is nearly uniform and a fixture could
# not tell e.g. a transposed coordinate or a misplaced token from the right one. With these the
# logits are O(1), as in trained models.
ATTENTION_STD = {"attn.to_qkv.weight": 0.25, "attn.to_hidden": 0.3, "attn.hidden_b": 0.3, "attn.to_q": 0.3,
                 "attn.to_k": 0.3}


def _net(**kw: Any) -> dict[str, Any]:
    """A ``network_g`` dict as in the paper's YAML files (small defaults for fixtures)."""
    base: dict[str, Any] = {
        "type": "SST",
        "dim": 16,
        "window_sizes": [4, 8, 16],
        "num_heads": [2, 2, 2],
        "ranks": [4, 6, 8],
        "n_blocks": 1,
        "exp_ratio": 1.5,
        "attn_type": "RIB",
        "rib_hidden_dim": 16,
        "rib_n_freqs": 6,
        "upscaling_factor": 2,
        "upsampler_type": "pixelshuffle_direct",
        "gate_type": "DWC",
        "intermediate_dim": 16,
    }
    base.update(kw)
    return base


_LIGHT_LIKE = dict(dim=12, num_heads=[3, 3, 3, 3], window_sizes=[8, 16, 8, 16], ranks=[8, 8, 12, 12])
_BASE_LIKE = dict(dim=12, window_sizes=[8, 16], num_heads=[2, 2], ranks=[8, 16], exp_ratio=1.25,
                  upsampler_type="pixelshuffle", intermediate_dim=10)
_NNCONV = dict(dim=12, window_sizes=[8, 16], num_heads=[2, 3], ranks=[6, 4], upsampler_type="nn+conv",
               intermediate_dim=8)

# name -> dict(net: network_g, shape: input shape, seed[, checkpoint: the case whose .pth is loaded])
CASES: dict[str, dict[str, Any]] = {
    # pixelshuffle_direct (light models): cycling windows without shift, a rank per layer, odd sizes
    "direct_x2_cyclic": dict(net=_net(), shape=(1, 3, 37, 29), seed=1),
    "direct_x3_lightlike": dict(net=_net(**_LIGHT_LIKE, upscaling_factor=3), shape=(1, 3, 37, 29), seed=2),
    "direct_x4_two_blocks": dict(
        net=_net(dim=12, n_blocks=2, window_sizes=[8, 16], num_heads=[2, 4], ranks=[8, 4], upscaling_factor=4),
        shape=(2, 3, 12, 17), seed=3,
    ),
    # pixelshuffle (base/large models), intermediate_dim 10 (64/96 in the released ones)
    "pixelshuffle_x2": dict(net=_net(**_BASE_LIKE), shape=(2, 3, 20, 27), seed=4),
    "pixelshuffle_x3": dict(net=_net(**_BASE_LIKE, upscaling_factor=3), shape=(1, 3, 21, 19), seed=5),
    "pixelshuffle_x4": dict(net=_net(**_BASE_LIKE, upscaling_factor=4), shape=(1, 3, 18, 15), seed=6),
    # nn+conv
    "nnconv_x2": dict(net=_net(**_NNCONV), shape=(1, 3, 22, 25), seed=7),
    "nnconv_x3": dict(net=_net(**_NNCONV, upscaling_factor=3), shape=(1, 3, 19, 17), seed=8),
    "nnconv_x4": dict(net=_net(**_NNCONV, upscaling_factor=4), shape=(2, 3, 13, 11), seed=9),
    # equal windows -> odd layers shifted; 3 heads of odd width 5; int(15 * 1.5) = 22 FFN channels
    "shift_h3_odd": dict(
        net=_net(dim=15, window_sizes=[8, 8, 8, 8], num_heads=[3, 3, 3, 3], ranks=[6, 6, 10, 10]),
        shape=(2, 3, 23, 19), seed=10,
    ),
    # odd window size (shift by 2); 25 rows need no padding, 21 columns are padded to 25
    "shift_ws5": dict(
        net=_net(window_sizes=[5, 5], num_heads=[2, 2], ranks=[4, 4], rib_n_freqs=3),
        shape=(1, 3, 25, 21), seed=11,
    ),
    # gates and Fourier features
    "gate_linear_nfreq10": dict(net=_net(gate_type="Linear", rib_n_freqs=10), shape=(1, 3, 26, 30), seed=12),
    "gate_none_nfreq0": dict(net=_net(gate_type=None, rib_n_freqs=0), shape=(1, 3, 26, 30), seed=13),
    # the largest window exceeds the image: one window, reflect-padded (padding < side, else the paper crashes)
    "window_exceeds_image": dict(
        net=_net(window_sizes=[16, 48], num_heads=[2, 2], ranks=[8, 8], rib_n_freqs=10),
        shape=(1, 3, 30, 26), seed=14,
    ),
    # scale change: an x2 checkpoint loaded into a model of another scale (upsampler resized)
    "direct_x2_to_x3": dict(
        net=_net(upscaling_factor=3), shape=(1, 3, 21, 18), seed=15, checkpoint="direct_x2_cyclic",
    ),
    "pixelshuffle_x2_to_x4": dict(
        net=_net(**_BASE_LIKE, upscaling_factor=4), shape=(1, 3, 14, 16), seed=16, checkpoint="pixelshuffle_x2",
    ),
    # nn+conv has no up_conv to resize: the paper loads an x2 checkpoint into x3 unchanged (same keys and shapes)
    "nnconv_x2_to_x3": dict(
        net=_net(**_NNCONV, upscaling_factor=3), shape=(1, 3, 15, 13), seed=17, checkpoint="nnconv_x2",
    ),
}


def _escrib_net(**kw: Any) -> dict[str, Any]:
    """An ESCRIB ``network_g`` with the keys of the paper's options/test/ESCRIB_X*.yaml (small values).

    The released models: dim 64, pdim 16, kernel_size 13, n_blocks 5, conv_blocks 5, window_size 64,
    num_heads 4, exp_ratio 1.25, attn_type RIB, rank 16, rib_hidden_dim 32, rib_n_freqs 10,
    gate_type DWC, upsampler_type pixelshuffle_direct (the default; not written in the YAML files).
    """
    base: dict[str, Any] = {
        "type": "ESCRIB",
        "dim": 16,
        "pdim": 8,
        "kernel_size": 7,
        "n_blocks": 1,
        "conv_blocks": 2,
        "window_size": 8,
        "num_heads": 2,
        "upscaling_factor": 2,
        "exp_ratio": 1.25,
        "attn_type": "RIB",
        "rank": 4,
        "rib_hidden_dim": 8,
        "rib_n_freqs": 3,
        "gate_type": "DWC",
        "upsampler_type": "pixelshuffle_direct",
    }
    base.update(kw)
    return base


# ESCRIB: the zero-initialised last conv of dwc_proj (which makes the dynamic 3x3 kernel) is drawn
# at this std, so the dynamic branch changes the output clearly (see cases.json's dynamic_branch_effect).
ESCRIB_STD = {**ATTENTION_STD, "dwc_proj.3.weight": 0.2, "dwc_proj.3.bias": 0.1}

_ESCRIB_X3 = dict(pdim=4, kernel_size=5, n_blocks=2, conv_blocks=1, window_size=16, num_heads=4, exp_ratio=1.5,
                  rank=6, rib_hidden_dim=12, rib_n_freqs=10, gate_type="Linear", upscaling_factor=3)
_ESCRIB_X4 = dict(dim=12, pdim=6, kernel_size=9, conv_blocks=3, num_heads=3, exp_ratio=2, rank=8, rib_hidden_dim=16,
                  rib_n_freqs=0, gate_type=None, upscaling_factor=4)

# name -> dict(net, shape, seed[, checkpoint][, converted: save after convert()][, output_mode: "train"])
ESCRIB_CASES: dict[str, dict[str, Any]] = {
    # x2/x3/x4 with pixelshuffle_direct (the released upsampler); inputs not multiples of the window
    "escrib_x2": dict(net=_escrib_net(), shape=(1, 3, 19, 13), seed=101),
    "escrib_x3": dict(net=_escrib_net(**_ESCRIB_X3), shape=(1, 3, 21, 18), seed=102),
    "escrib_x4": dict(net=_escrib_net(**_ESCRIB_X4), shape=(1, 3, 11, 9), seed=103),
    # checkpoint saved after model.convert(): plk_filter is already the geometric ensemble
    "escrib_x2_converted": dict(net=_escrib_net(), shape=(1, 3, 17, 23), seed=104, converted=True),
    # the other upsamplers (intermediate_dim 8)
    "escrib_pixelshuffle_x2": dict(net=_escrib_net(upsampler_type="pixelshuffle", intermediate_dim=8),
                                   shape=(1, 3, 12, 10), seed=105),
    "escrib_nnconv_x3": dict(net=_escrib_net(upsampler_type="nn+conv", intermediate_dim=8, upscaling_factor=3),
                             shape=(1, 3, 10, 11), seed=106),
    # use_ln (not in the YAML files; default False): a LayerNorm before every conv block
    "escrib_use_ln": dict(net=_escrib_net(use_ln=True, conv_blocks=1), shape=(1, 3, 14, 12), seed=107),
    # window 16 > image 9x14: one window, reflect-padded
    "escrib_window_exceeds_image": dict(net=_escrib_net(window_size=16, rank=5), shape=(1, 3, 9, 14), seed=108),
    # batch 2: the paper's eval path reshapes the dynamic kernel to (pdim, 1, 3, 3) and fails on batch > 1,
    # so this output is the training path's (same function; checked equal on the batch-1 cases)
    "escrib_batch2_train": dict(net=_escrib_net(n_blocks=2, conv_blocks=1), shape=(2, 3, 13, 11), seed=109,
                                output_mode="train"),
    # scale change: escrib_x2's checkpoint loaded into x4 through the paper's load_state_dict (upsampler resized)
    "escrib_x2_to_x4": dict(net=_escrib_net(upscaling_factor=4), shape=(1, 3, 10, 9), seed=110,
                            checkpoint="escrib_x2"),
}


# ------------------------------------------------------------------------------------- the oracle
def _import_network(sst_root: Path, module: str | None, defaults: tuple[str, ...], cls: str) -> tuple[type, type]:
    """The paper's network class ``cls`` and its ``WindowAttention2D``, from ``module`` (or the first of
    ``defaults`` that imports) under ``sst_root``."""
    sys.path.insert(0, str(sst_root))
    errors = []
    for name in [module] if module else defaults:
        try:
            mod = importlib.import_module(name)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
            continue
        return getattr(mod, cls), mod.WindowAttention2D
    raise SystemExit(f"cannot import the paper's {cls} from {sst_root}:\n  " + "\n  ".join(errors))


def import_sst(sst_root: Path, module: str | None) -> tuple[type, type]:
    """The paper's ``SST`` and ``WindowAttention2D`` classes, imported from ``sst_root``."""
    return _import_network(sst_root, module, DEFAULT_MODULES, "SST")


def import_escrib(sst_root: Path, module: str | None) -> tuple[type, type]:
    """The paper's ``ESCRIB`` and ``WindowAttention2D`` classes, imported from ``sst_root``."""
    return _import_network(sst_root, module, DEFAULT_ESCRIB_MODULES, "ESCRIB")


def exact_cat_attention(self: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        pos_q: torch.Tensor, pos_k: torch.Tensor) -> torch.Tensor:
    """Replacement for ``WindowAttention2D._flash_cat_attn``: the same attention, in float64.

    Inputs as the paper passes them: q, k, v (windows, heads, N, D) (or (windows, N, heads, D) when
    its FlashAttention-3 layout is active), pos_q, pos_k (windows, heads, N, R). As in the paper,
    q is scaled by D^-0.5 and pos_q by R^-0.5 (in float32), then [q, pos_q] . [k, pos_k] are the
    logits; here they, the softmax and the product with v are computed in float64, and the result
    is returned in float32 with the D value channels (the paper's zero-padded V gives the same).
    """
    flash_layout = bool(getattr(sys.modules[type(self).__module__], "FLASH_ATTN_AVAILABLE", False))
    if flash_layout:
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    d, r = q.shape[-1], pos_q.shape[-1]
    q_cat = torch.cat([(q * d**-0.5).double(), (pos_q * r**-0.5).double()], dim=-1)
    k_cat = torch.cat([k.double(), pos_k.double()], dim=-1)
    weights = torch.softmax(q_cat @ k_cat.transpose(-2, -1), dim=-1)
    out = (weights @ v.double()).float()
    return out.transpose(1, 2) if flash_layout else out


@contextlib.contextmanager
def exact_attention(window_attention_cls: type) -> Iterator[None]:
    """Within the block, the paper's RIB attention is computed by :func:`exact_cat_attention`."""
    original = window_attention_cls._flash_cat_attn
    window_attention_cls._flash_cat_attn = exact_cat_attention
    try:
        yield
    finally:
        window_attention_cls._flash_cat_attn = original


def build_oracle(sst_cls: type, network_g: dict[str, Any]) -> torch.nn.Module:
    kwargs = {k: v for k, v in network_g.items() if k != "type"}
    return sst_cls(**kwargs)


def perturb_(model: torch.nn.Module, generator: torch.Generator, std: float = NOISE_STD,
             targets: dict[str, float] | None = None) -> None:
    """Add N(0, std) noise to every parameter (biases start at zero) so none is zero.

    The parameters named in ``targets`` (default ATTENTION_STD; matched by name suffix) are first
    scaled to that std (from their init), or drawn from N(0, std) where they start at zero
    (``hidden_b``, ESCRIB's ``dwc_proj`` last conv).
    """
    targets = ATTENTION_STD if targets is None else targets
    with torch.no_grad():
        for name, p in model.named_parameters():
            target = next((v for k, v in targets.items() if name.endswith(k)), None)
            if target is not None:
                if p.std() > 0:
                    p.mul_(target / p.std())
                else:
                    p.copy_(torch.randn(p.shape, generator=generator) * target)
            p.add_(torch.randn(p.shape, generator=generator) * std)
            if (p == 0).any():
                raise RuntimeError(f"parameter {name} still holds zeros after perturbation")


def run(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


# ------------------------------------------------------------------------------------------- main
def make(sst_cls: type, attn_cls: type, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {}
    states: dict[str, dict[str, torch.Tensor]] = {}
    for name, case in CASES.items():
        net = case["net"]
        torch.manual_seed(case["seed"])
        model = build_oracle(sst_cls, net)
        source = case.get("checkpoint")
        if source is None:
            perturb_(model, torch.Generator().manual_seed(1000 + case["seed"]))
            state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
            torch.save({"params_ema": state}, out / f"{name}.pth")
            ckpt = f"{name}.pth"
        else:
            ckpt = f"{source}.pth"
            state = states[source]
        model.load_state_dict(state)  # the paper's override: resizes the upsampler on a scale change
        states[name] = state

        x = torch.rand(case["shape"], generator=torch.Generator().manual_seed(2000 + case["seed"]))
        with exact_attention(attn_cls):
            y = run(model, x)
        y_bf16 = run(model, x)  # the paper's own (bfloat16) attention
        torch.save({"input": x, "output": y}, out / f"{name}_io.pt")
        dev = (y_bf16 - y).abs().max().item()
        index[name] = {
            "network_g": net,
            "checkpoint": ckpt,
            "input_shape": list(x.shape),
            "output_shape": list(y.shape),
            "official_bf16_max_abs_dev": dev,
            "output_std": y.std().item(),
            "seed": case["seed"],
        }
        if source is not None:
            index[name]["note"] = f"{ckpt} (x{CASES[source]['net']['upscaling_factor']}) loaded into this network_g"
        print(f"{name:24s} in {tuple(x.shape)} out {tuple(y.shape)} bf16 dev {dev:.2e}")
    (out / "cases.json").write_text(json.dumps(index, indent=1) + "\n")
    total = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"wrote {len(index)} cases to {out} ({total / 2**20:.2f} MiB)")


def verify(sst_cls: type, attn_cls: type, fixtures: Path) -> None:
    index = json.loads((fixtures / "cases.json").read_text())
    for name, case in index.items():
        model = build_oracle(sst_cls, case["network_g"])
        state = torch.load(fixtures / case.get("checkpoint", f"{name}.pth"), weights_only=True)["params_ema"]
        model.load_state_dict(state)
        io = torch.load(fixtures / f"{name}_io.pt", weights_only=True)
        with exact_attention(attn_cls):
            y = run(model, io["input"])
        y_bf16 = run(model, io["input"])
        print(
            f"{name:24s} oracle vs stored {(y - io['output']).abs().max().item():.2e}   "
            f"bf16 vs stored {(y_bf16 - io['output']).abs().max().item():.2e}"
        )


def run_train_path(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The forward pass in training mode (no dropout or batch norm: the same function as eval)."""
    with torch.no_grad():
        y = model.train()(x)
    model.eval()
    return y


def run_escrib(model: torch.nn.Module, x: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "eval":
        return run(model, x.clone())  # the paper's eval path writes into its activations in place
    if mode == "train":
        return run_train_path(model, x.clone())
    raise ValueError(f"output_mode must be 'eval' or 'train', got {mode!r}")


def build_escrib(escrib_cls: type, network_g: dict[str, Any], converted: bool) -> torch.nn.Module:
    """The paper's ESCRIB; ``converted`` calls ``convert()`` first (so a folded checkpoint loads as is)."""
    model = build_oracle(escrib_cls, network_g)
    if converted:
        model.convert()
    return model


def make_escrib(escrib_cls: type, attn_cls: type, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {}
    states: dict[str, dict[str, torch.Tensor]] = {}
    for name, case in ESCRIB_CASES.items():
        net = case["net"]
        mode = case.get("output_mode", "eval")
        converted = bool(case.get("converted", False))
        torch.manual_seed(case["seed"])
        model = build_oracle(escrib_cls, net)
        source = case.get("checkpoint")
        unfolded_state = None
        if source is None:
            perturb_(model, torch.Generator().manual_seed(1000 + case["seed"]), targets=ESCRIB_STD)
            if converted:
                unfolded_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                model.convert()
            state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
            torch.save({"params_ema": state}, out / f"{name}.pth")
            ckpt = f"{name}.pth"
        else:
            if ESCRIB_CASES[source].get("converted"):
                raise ValueError(f"case {name}: source checkpoint {source} must not be a converted one")
            ckpt = f"{source}.pth"
            state = states[source]
        model.load_state_dict(state)  # the paper's override: resizes the upsampler on a scale change
        states[name] = state

        x = torch.rand(case["shape"], generator=torch.Generator().manual_seed(2000 + case["seed"]))
        info: dict[str, Any] = {}
        with exact_attention(attn_cls):
            y = run_escrib(model, x, mode)
            y_train = run_train_path(model, x.clone())
            info["eval_vs_train_max_abs_dev"] = (run(model, x.clone()) - y_train).abs().max().item() \
                if x.shape[0] == 1 else None
            # the dynamic-kernel branch: the same model with dwc_proj's last conv zeroed
            probe = build_escrib(escrib_cls, net, converted)
            probe.load_state_dict(state)
            for m in probe.modules():
                if hasattr(m, "dwc_proj"):
                    m.dwc_proj[-1].weight.data.zero_()
                    m.dwc_proj[-1].bias.data.zero_()
            info["dynamic_branch_effect"] = (run_escrib(probe, x, mode) - y).abs().max().item()
            # the geometric fold: unconverted weights used without it; converted weights folded again
            probe = build_escrib(escrib_cls, net, converted=False)
            probe.load_state_dict(state)
            if converted:
                info["refold_max_abs_dev"] = (run_escrib(probe, x, mode) - y).abs().max().item()
                unfolded = build_escrib(escrib_cls, net, converted=False)
                unfolded.load_state_dict(unfolded_state)
                info["vs_unconverted_max_abs_dev"] = (run_escrib(unfolded, x, mode) - y).abs().max().item()
            else:
                probe.plk_func = torch.nn.Identity()
                info["geo_ensemble_effect"] = (run_escrib(probe, x, mode) - y).abs().max().item()
        y_bf16 = run_escrib(model, x, mode)  # the paper's own (bfloat16) attention
        torch.save({"input": x, "output": y}, out / f"{name}_io.pt")
        dev = (y_bf16 - y).abs().max().item()
        index[name] = {
            "network_g": net,
            "checkpoint": ckpt,
            "converted": converted,
            "output_mode": mode,
            "input_shape": list(x.shape),
            "output_shape": list(y.shape),
            "official_bf16_max_abs_dev": dev,
            "output_std": y.std().item(),
            "seed": case["seed"],
            **info,
        }
        if source is not None:
            scale = ESCRIB_CASES[source]["net"]["upscaling_factor"]
            index[name]["note"] = f"{ckpt} (x{scale}) loaded into this network_g"
        extras = "  ".join(f"{k} {v:.2e}" for k, v in info.items() if v is not None)
        print(f"{name:28s} in {tuple(x.shape)} out {tuple(y.shape)} bf16 dev {dev:.2e}  {extras}")
    (out / "cases.json").write_text(json.dumps(index, indent=1) + "\n")
    total = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"wrote {len(index)} cases to {out} ({total / 2**20:.2f} MiB)")


def verify_escrib(escrib_cls: type, attn_cls: type, fixtures: Path) -> None:
    index = json.loads((fixtures / "cases.json").read_text())
    for name, case in index.items():
        source = case.get("checkpoint", f"{name}.pth")
        model = build_escrib(escrib_cls, case["network_g"], bool(case.get("converted", False)))
        state = torch.load(fixtures / source, weights_only=True)["params_ema"]
        model.load_state_dict(state)
        io = torch.load(fixtures / f"{name}_io.pt", weights_only=True)
        mode = case.get("output_mode", "eval")
        with exact_attention(attn_cls):
            y = run_escrib(model, io["input"], mode)
        y_bf16 = run_escrib(model, io["input"], mode)
        print(
            f"{name:28s} oracle vs stored {(y - io['output']).abs().max().item():.2e}   "
            f"bf16 vs stored {(y_bf16 - io['output']).abs().max().item():.2e}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sst-root", type=Path, required=True, help="directory the paper's code is imported from")
    ap.add_argument("--sst-module", help=f"module holding SST (default: first of {', '.join(DEFAULT_MODULES)})")
    ap.add_argument("--arch", choices=("sst", "escrib"), default="sst", help="which network's fixtures (default sst)")
    ap.add_argument("--escrib-module",
                    help=f"module holding ESCRIB (default: first of {', '.join(DEFAULT_ESCRIB_MODULES)})")
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--out", type=Path, help="write fixtures here")
    group.add_argument("--verify", type=Path, help="check the oracle against an existing fixture directory")
    args = ap.parse_args()

    torch.set_grad_enabled(False)
    if args.arch == "escrib":
        escrib_cls, attn_cls = import_escrib(args.sst_root, args.escrib_module)
        if args.verify:
            verify_escrib(escrib_cls, attn_cls, args.verify)
        else:
            make_escrib(escrib_cls, attn_cls, args.out)
        return
    sst_cls, attn_cls = import_sst(args.sst_root, args.sst_module)
    if args.verify:
        verify(sst_cls, attn_cls, args.verify)
    else:
        make(sst_cls, attn_cls, args.out)


if __name__ == "__main__":
    main()
