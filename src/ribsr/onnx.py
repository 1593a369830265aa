"""ONNX: export an SST or ESC-RIB to an ``.onnx`` file (:func:`export_onnx`) and run one with onnxruntime
(:class:`OnnxModel`).

The exported graph takes a (B, 3, H, W) float batch in [0, 1] (dynamic B, H and W) and returns
(B, 3, s*H, s*W), as :class:`ribsr.model.SST` does: the reflection padding of every layer to whole windows
happens inside the graph, so any size works. The positional terms do not depend on the input, so they are
computed once at export and stored as constants: RIB and FlashBias as their low-rank factors (concatenated
to q and k, so no (heads, N, N) bias is stored or built), RPB as its dense bias, RoPE as its cos/sin tables.
ESC-RIB's large kernel is stored averaged (:meth:`~ribsr.model.esc.ESCRIB.fold_kernel`), and its per-image 3x3
kernels are applied as nine shifted products (:class:`ExportPartialLargeKernelConv`).

The file's ``metadata_props`` carry what the inference code needs (:data:`META_SCALE`,
:data:`META_MULTIPLE_OF`) and the network's configuration. onnx and onnxruntime are optional
(``pip install ribsr[onnx]``); importing this module needs neither.
"""

from __future__ import annotations

import copy
import math
import numbers
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ribsr.files import atomic_write, not_a_file
from ribsr.model.attention import WindowAttention, mirror_index
from ribsr.model.esc import DYNAMIC_KERNEL, ESCRIB, PartialLargeKernelConv
from ribsr.model.positional import RoPE, rotate_pairs
from ribsr.model.sst import SST
from ribsr.modelinfo import ModelInfo

FORMAT_NAME = "ribsr-onnx"
META_FORMAT = "ribsr_format"
META_SCALE = "ribsr_scale"
META_MULTIPLE_OF = "ribsr_multiple_of"
META_CONFIG = "ribsr_config"
META_DTYPE = "ribsr_dtype"
META_VERSION = "ribsr_version"
#: "standard" (ONNX operators only) or "onnxruntime-fused" (com.microsoft.MultiHeadAttention).
META_ATTENTION = "ribsr_attention"
#: Bytes of attention scores per input pixel at the widest layer (what onnxruntime materialises).
META_SCORE_BYTES = "ribsr_score_bytes_per_pixel"

# Bounds on what an .onnx file's metadata (or the scale= and align= given for a file without it) may say: a file is
# input like any other, and these values size every tile and buffer. ribsr's networks have scales 2, 3, 4 and 8
# and alignment units (lcm of the window sizes) up to 128.
MAX_SCALE = 16
MAX_MULTIPLE_OF = 4096
MAX_SCORE_BYTES = 1 << 30

DEFAULT_OPSET = 17  # the first with LayerNormalization
MIN_OPSET = 14
INPUT_NAME, OUTPUT_NAME = "input", "output"
INSTALL_HINT = "install the ONNX extra: pip install 'ribsr[onnx]' (onnx and onnxruntime)"


def _require(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError as exc:
        raise ImportError(f"{module} is not installed: {INSTALL_HINT}") from exc


# ---------------------------------------------------------------------- the exported graph
class OrtMultiHeadAttention(torch.autograd.Function):
    """onnxruntime's fused ``com.microsoft.MultiHeadAttention`` (scale 1) in the exported graph; computed by
    ``scaled_dot_product_attention`` in PyTorch. q, k: (B, S, heads*E), v: (B, S, heads*Dv) -> (B, S, heads*Dv).

    Its CPU kernel runs a flash-attention loop for float32 without mask or bias: the scores are never
    materialised. The op exists only in onnxruntime.
    """

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
        b, s = q.shape[:2]
        # (B, S, heads*E) -> (B, heads, S, E)
        q, k, v = (t.reshape(b, s, heads, -1).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0)  # (B, heads, S, Dv)
        return out.transpose(1, 2).reshape(b, s, -1)

    @staticmethod
    def symbolic(g: Any, q: Any, k: Any, v: Any, heads: int) -> Any:
        out = g.op("com.microsoft::MultiHeadAttention", q, k, v, num_heads_i=heads, scale_f=1.0)
        out.setType(v.type())  # queries and keys are the same tokens: the output has v's shape and type
        return out


class ExportWindowAttention(nn.Module):
    """:class:`~ribsr.model.attention.WindowAttention` written for export: the same function, computed
    without data-dependent branches (padding and rolling as index gathers,
    :func:`~ribsr.model.attention.mirror_index`) and with the positional term as constants (buffers).
    Attention is plain matmul and softmax (softmax in float32), or with ``fused`` onnxruntime's
    :class:`OrtMultiHeadAttention` in float32 (not for dense biases: RPB stays plain)."""

    def __init__(self, attn: WindowAttention, fused: bool = False) -> None:
        super().__init__()
        self.to_qkv, self.to_out, self.gate = attn.to_qkv, attn.to_out, attn.gate
        self.ws, self.heads, self.dim = attn.window_size, attn.heads, attn.dim
        self.shift = attn.window_size // 2 if attn.shift else 0
        pos, ws, cpu = attn.pos, attn.window_size, torch.device("cpu")
        self.rope = isinstance(pos, RoPE)
        self.factors = pos.has_factors
        self.dense = pos.has_term and not pos.has_factors
        self.fused = fused and not self.dense
        with torch.no_grad():
            if self.rope:
                cos, sin = pos.compute_rotation(ws, cpu)  # (heads, N, D/2) each
                self.register_buffer("rope_cos", cos.clone())
                self.register_buffer("rope_sin", sin.clone())
            if self.factors:
                q_f, k_f = pos.compute_factors(ws, cpu)  # (heads, N, R) each, q_f . k_f the logit
                self.register_buffer("pos_q", q_f.detach().clone())
                self.register_buffer("pos_k", k_f.detach().clone())
            elif self.dense:
                self.register_buffer("pos_bias", pos.compute_bias(ws, cpu).detach().clone())  # (heads, N, N)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, c, h, w = x.shape
        ws, heads, shift = self.ws, self.heads, self.shift
        d = c // heads
        gate = self.gate(x) if self.gate is not None else None
        hp, wp = (h + ws - 1) // ws * ws, (w + ws - 1) // ws * ws
        rows, cols = mirror_index(h, hp, shift), mirror_index(w, wp, shift)
        # (B, C, H, W) -> (B, H, W, C) -> padded and rolled (B, Hp, Wp, C) -> (B*nh, ws, nw, ws, C)
        xw = x.permute(0, 2, 3, 1).index_select(1, rows).index_select(2, cols)
        nw = wp // ws
        windows = xw.reshape(-1, ws, nw, ws, c).transpose(1, 2).reshape(-1, ws * ws, c)  # (B*nh*nw, N, C)
        qkv = F.linear(windows, self.to_qkv.weight.flatten(1), self.to_qkv.bias)  # (B*nh*nw, N, 3C)
        # (B*nh*nw, N, 3C) -> (3, B*nh*nw, heads, N, D), channel = part*C + head*D + d
        q, k, v = qkv.reshape(-1, ws * ws, 3, heads, d).permute(2, 0, 3, 1, 4).unbind(0)
        if self.rope:
            q, k = rotate_pairs(q, self.rope_cos, self.rope_sin), rotate_pairs(k, self.rope_cos, self.rope_sin)
        q = q * (1.0 / math.sqrt(d))
        if self.factors:
            # [q / sqrt(D), q_f] . [k, k_f] = q.k / sqrt(D) + the positional logit
            n_win = q.shape[0]
            q = torch.cat([q, self.pos_q.to(q.dtype).expand(n_win, -1, -1, -1)], dim=-1)
            k = torch.cat([k, self.pos_k.to(k.dtype).expand(n_win, -1, -1, -1)], dim=-1)
        if self.fused:
            # (B*nh*nw, heads, N, E) -> (B*nh*nw, N, heads*E), the op's layout; in float32
            q, k, v_in = (t.transpose(1, 2).flatten(2).float() for t in (q, k, v))
            out = OrtMultiHeadAttention.apply(q, k, v_in, heads).to(v.dtype)  # (B*nh*nw, N, C)
        else:
            logits = torch.matmul(q, k.transpose(-1, -2)).float()  # (B*nh*nw, heads, N, N)
            if self.dense:
                logits = logits + self.pos_bias
            out = torch.matmul(torch.softmax(logits, dim=-1).to(v.dtype), v)  # (B*nh*nw, heads, N, D)
            out = out.transpose(1, 2)  # (B*nh*nw, N, heads, D)
        # (B*nh*nw, N, C) -> (B*nh, nw, ws, ws, C) -> (B, Hp, Wp, C)
        out = out.reshape(-1, nw, ws, ws, c).transpose(1, 2).reshape(-1, hp, wp, c)
        if shift:  # roll back and crop
            out = out.index_select(1, (torch.arange(h) - shift) % hp).index_select(2, (torch.arange(w) - shift) % wp)
        else:
            out = out[:, :h, :w]
        out = out.permute(0, 3, 1, 2)  # (B, C, H, W)
        if gate is not None:
            out = out * gate
        return self.to_out(out)


class ExportPartialLargeKernelConv(nn.Module):
    """:class:`~ribsr.model.esc.PartialLargeKernelConv` written for export: the same function, with each image's
    3x3 depthwise kernel applied as nine shifted products instead of one convolution whose group count is
    batch * pdim (an ONNX convolution's group count is fixed, the batch is not)."""

    def __init__(self, plk: PartialLargeKernelConv) -> None:
        super().__init__()
        self.pdim, self.dwc_proj = plk.pdim, plk.dwc_proj

    def forward(self, x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        p, s = self.pdim, DYNAMIC_KERNEL
        part, rest = x[:, :p], x[:, p:]
        h, w = part.shape[-2:]
        dynamic = self.dwc_proj(part).unflatten(1, (p, s, s))  # (B, pdim*9, 1, 1) -> (B, pdim, 3, 3, 1, 1)
        # zeros around, as the convolution pads (concatenated: F.pad's export reverses its pads with a step -1 Slice)
        rows = torch.zeros_like(part[:, :, : s // 2])  # (B, pdim, 1, W)
        padded = torch.cat([rows, part, rows], dim=2)
        cols = torch.zeros_like(padded[:, :, :, : s // 2])  # (B, pdim, H+2, 1)
        padded = torch.cat([cols, padded, cols], dim=3)  # (B, pdim, H+2, W+2)
        local = sum(dynamic[:, :, i, j] * padded[:, :, i:i + h, j:j + w] for i in range(s) for j in range(s))
        part = F.conv2d(part, kernel, padding=kernel.shape[-1] // 2) + local
        return torch.cat([part, rest], dim=1)


def exportable(model: SST | ESCRIB, fused: bool = False) -> SST | ESCRIB:
    """A copy of ``model`` (float32, CPU, eval) whose attention layers are :class:`ExportWindowAttention` (and, for
    ESC-RIB, whose large kernel is folded and whose dynamic kernels are :class:`ExportPartialLargeKernelConv`)."""
    twin = copy.deepcopy(model).float().cpu().eval()
    if isinstance(twin, ESCRIB):
        twin.fold_kernel()  # stored averaged: no flips in the graph
    for parent in list(twin.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, WindowAttention):
                setattr(parent, name, ExportWindowAttention(child, fused=fused))
            elif isinstance(child, PartialLargeKernelConv):
                setattr(parent, name, ExportPartialLargeKernelConv(child))
    return twin


def score_bytes_per_pixel(twin: nn.Module) -> int:
    """Bytes of float32 attention scores per input pixel that the widest unfused layer of an
    :func:`exportable` model materialises: heads * ws^2 * 4 (0 when all layers are fused)."""
    return max([m.heads * m.ws**2 * 4 for m in twin.modules() if isinstance(m, ExportWindowAttention) and not m.fused],
               default=0)


# ---------------------------------------------------------------------- export
def export_onnx(
    model: SST | ESCRIB,
    path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
    fused_attention: bool = False,
    metadata: Mapping[str, str] | None = None,
    check: bool = True,
) -> Path:
    """Write ``model`` as an ONNX file with dynamic batch, height and width.

    ``fp16`` stores weights and computes in float16 (input and output float16 too; the softmax stays in
    float32). ``fused_attention`` computes attention with onnxruntime's fused ``MultiHeadAttention``
    (:class:`OrtMultiHeadAttention`; no (N, N) scores held and faster than the standard graph on the CPU,
    but the file then runs only in onnxruntime); without it the graph uses standard ONNX operators only.
    The file's metadata
    holds the scale, the alignment unit (lcm of the window sizes), the configuration and ``metadata``.
    ``check`` runs ``onnx.checker`` on the result. The file is written next to ``path`` under a temporary
    name and renamed into place.
    """
    onnx = _require("onnx")
    if not isinstance(model, (SST, ESCRIB)):
        raise TypeError(f"export_onnx exports an SST or an ESCRIB, got {type(model).__name__}")
    max_opset = max_supported_opset()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= max_opset:
        raise ValueError(f"opset must be an integer from {MIN_OPSET} to {max_opset} (the most torch "
                         f"{torch.__version__}'s TorchScript exporter writes), got {opset!r}")
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        raise ValueError(f"export_onnx writes .onnx files, got {path}")
    twin = exportable(model, fused=fused_attention)
    dtype = torch.float16 if fp16 else torch.float32
    twin = twin.to(dtype)
    fused = any(m.fused for m in twin.modules() if isinstance(m, ExportWindowAttention))
    # Traced once, at a small size (the graph does not depend on it): not a multiple of any window, no 1s.
    example = torch.rand(2, 3, 13, 11, dtype=dtype)
    with atomic_write(path) as tmp:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based exporter is deprecated
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                twin, (example,), str(tmp), dynamo=False, opset_version=opset,
                custom_opsets={"com.microsoft": 1} if fused else None,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                              OUTPUT_NAME: {0: "batch", 2: "out_height", 3: "out_width"}},
            )
        proto = onnx.load(str(tmp))
        from ribsr import __version__

        meta = {
            META_FORMAT: FORMAT_NAME,
            META_VERSION: __version__,
            META_SCALE: str(model.config.scale),
            META_MULTIPLE_OF: str(math.lcm(*model.config.window_sizes)),
            META_CONFIG: model.config.to_json(),
            META_DTYPE: "float16" if fp16 else "float32",
            META_SCORE_BYTES: str(score_bytes_per_pixel(twin)),
            META_ATTENTION: "onnxruntime-fused" if fused else "standard",
            **dict(metadata or {}),
        }
        del proto.metadata_props[:]
        for key, value in meta.items():
            proto.metadata_props.add(key=key, value=str(value))
        proto.doc_string = f"{type(model).__name__} x{model.config.scale} exported by ribsr {__version__}"
        if check:
            onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
    return path


def max_supported_opset() -> int:
    """The newest opset the installed torch's TorchScript-based exporter writes (20 for torch 2.13)."""
    from torch.onnx import _constants

    return int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20))



# ---------------------------------------------------------------------- running
class OnnxModel(nn.Module):
    """An exported ``.onnx`` file run by onnxruntime, usable wherever an SST or ESC-RIB is (:class:`ribsr.Upscaler`,
    :func:`ribsr.tiling.tiled_forward`): (B, 3, H, W) float tensors in, (B, 3, s*H, s*W) float32 out, on the
    input's device.

    ``info`` (:class:`~ribsr.modelinfo.ModelInfo`) comes from the file's metadata; ``scale`` and ``align``
    are for files exported elsewhere without it. Either way the scale must lie in 1..:data:`MAX_SCALE` and the
    alignment unit in 1..:data:`MAX_MULTIPLE_OF`, and with a network configuration in the metadata agree with
    it (ValueError naming the file, the key and the value). ``threads``: onnxruntime's intra-op threads (None: its
    default). ``providers``: onnxruntime execution providers (default: the CPU).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        scale: int | None = None,
        align: int | None = None,
    ) -> None:
        super().__init__()
        ort = _require("onnxruntime")
        self.path = Path(path)
        what = not_a_file(self.path)
        if what == "not there":
            raise FileNotFoundError(f"no such ONNX file: {self.path}")
        if what is not None:  # a folder said "no such ONNX file"; a FIFO would block onnxruntime
            raise ValueError(f"{self.path}: is {what}, not an ONNX file")
        options = ort.SessionOptions()
        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads must be >= 1, got {threads}")
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), options,
                                                providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable files
            raise ValueError(f"{self.path}: not a model onnxruntime can load: {exc}") from exc
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1 or len(inputs[0].shape) != 4:
            raise ValueError(f"{self.path}: expected one (B, 3, H, W) input and one output, got inputs "
                             f"{[(i.name, i.shape) for i in inputs]} and outputs {[o.name for o in outputs]}")
        self.input_name = inputs[0].name
        self.input_type = {"tensor(float)": "float32", "tensor(float16)": "float16"}.get(inputs[0].type)
        if self.input_type is None:
            raise ValueError(f"{self.path}: input {inputs[0].name!r} is {inputs[0].type}, expected float or float16")
        self.config = self._config()
        self.info = self._info(scale, align)

    def _config(self) -> Any:
        text = self.metadata.get(META_CONFIG)
        if text is None:
            return None
        from ribsr.config import config_from_json

        return config_from_json(text, source=f"{self.path} metadata {META_CONFIG}")

    def _metadata_int(self, key: str, low: int, high: int) -> int:
        """The integer the metadata holds under ``key``, from ``low`` to ``high``; else a ValueError naming the
        file, the key and the value."""
        text = self.metadata[key]
        shown = text if len(text) <= 40 else f"{text[:40]}... ({len(text)} characters)"
        try:
            value = int(text) if len(text) <= 40 else None
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise ValueError(f"{self.path}: metadata {key}={shown!r} is not an integer from {low} to {high}; "
                             "the file is damaged or was not written by ribsr export-onnx")
        return value

    def _info(self, scale: int | None, align: int | None) -> ModelInfo:
        def stored(key: str, override: int | None, name: str, high: int) -> int:
            if override is not None:
                whole = isinstance(override, numbers.Integral) and not isinstance(override, bool)
                if not (whole and 1 <= override <= high):
                    raise ValueError(f"{name} must be an integer from 1 to {high}, got {override!r}")
                return int(override)
            if key not in self.metadata:
                raise ValueError(f"{self.path} has no {key!r} in its metadata (not exported by ribsr export-onnx); "
                                 "pass scale= and align=")
            return self._metadata_int(key, 1, high)

        info_scale = stored(META_SCALE, scale, "scale", MAX_SCALE)
        multiple_of = stored(META_MULTIPLE_OF, align, "align", MAX_MULTIPLE_OF)
        if self.config is not None:
            # The configuration and the numbers beside it must agree: the tiles are placed by the numbers.
            expected = {"scale": (info_scale, self.config.scale, META_SCALE, scale),
                        "align": (multiple_of, math.lcm(*self.config.window_sizes), META_MULTIPLE_OF, align)}
            for name, (got, want, key, override) in expected.items():
                if got != want:
                    given = f"{name}={override}" if override is not None else f"metadata {key}={got}"
                    raise ValueError(f"{self.path}: {given} disagrees with the network configuration in its "
                                     f"metadata ({META_CONFIG}), which gives {want}")
        width = self.config.dim if self.config is not None else 64
        from ribsr.planning import MODELLED_BYTES_PER_PIXEL_PER_CHANNEL

        # The modelled memory cost counts bytes per pixel as 160 per channel of ``width``: onnxruntime also
        # holds a layer's attention scores, so the width is raised to cover them.
        scores = self._metadata_int(META_SCORE_BYTES, 0, MAX_SCORE_BYTES) if self.metadata.get(META_SCORE_BYTES) else 0
        width += math.ceil(scores / MODELLED_BYTES_PER_PIXEL_PER_CHANNEL)
        return ModelInfo(scale=info_scale, multiple_of=multiple_of, dtypes=(torch.float32,), width=width)

    @property
    def scale(self) -> int:
        return self.info.scale

    def run_numpy(self, x: Any) -> Any:
        """Run the session on a (B, 3, H, W) numpy array (cast to the file's input type)."""
        (y,) = self.session.run(None, {self.input_name: x.astype(self.input_type, copy=False)})
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an RGB batch of shape (B, 3, H, W), got {tuple(x.shape)}")
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        try:
            y = self.run_numpy(array)
        except Exception as exc:
            if "allocate" in str(exc).lower():
                raise MemoryError(f"onnxruntime failed to allocate memory: {exc}") from exc
            raise
        return torch.from_numpy(y).float().to(x.device)

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, scale={self.info.scale}, multiple_of={self.info.multiple_of}"


def is_onnx_path(spec: str | Path | None) -> bool:
    """True when ``spec`` names an ``.onnx`` file (by its suffix)."""
    return spec is not None and str(spec).lower().endswith(".onnx")
