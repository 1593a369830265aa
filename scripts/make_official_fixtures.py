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

Usage::

    python scripts/make_official_fixtures.py --sst-root /path/to/paper-code --out tests/fixtures/official
    python scripts/make_official_fixtures.py --sst-root /path/to/paper-code --verify ../shared/fixtures/official-sst
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


# ------------------------------------------------------------------------------------- the oracle
def import_sst(sst_root: Path, module: str | None) -> tuple[type, type]:
    """The paper's ``SST`` and ``WindowAttention2D`` classes, imported from ``sst_root``."""
    sys.path.insert(0, str(sst_root))
    errors = []
    for name in [module] if module else DEFAULT_MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
            continue
        return mod.SST, mod.WindowAttention2D
    raise SystemExit(f"cannot import the paper's SST from {sst_root}:\n  " + "\n  ".join(errors))


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


def perturb_(model: torch.nn.Module, generator: torch.Generator, std: float = NOISE_STD) -> None:
    """Add N(0, std) noise to every parameter (biases start at zero) so none is zero.

    The attention parameters named in ATTENTION_STD are first scaled to that std (from their init),
    or drawn from N(0, std) where they start at zero (``hidden_b``).
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            target = next((v for k, v in ATTENTION_STD.items() if name.endswith(k)), None)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sst-root", type=Path, required=True, help="directory the paper's code is imported from")
    ap.add_argument("--sst-module", help=f"module holding SST (default: first of {', '.join(DEFAULT_MODULES)})")
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--out", type=Path, help="write fixtures here")
    group.add_argument("--verify", type=Path, help="check the oracle against an existing fixture directory")
    args = ap.parse_args()

    torch.set_grad_enabled(False)
    sst_cls, attn_cls = import_sst(args.sst_root, args.sst_module)
    if args.verify:
        verify(sst_cls, attn_cls, args.verify)
    else:
        make(sst_cls, attn_cls, args.out)


if __name__ == "__main__":
    main()
