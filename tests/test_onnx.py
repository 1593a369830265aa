"""ONNX export (:func:`ribsr.onnx.export_onnx`) and onnxruntime inference (:class:`ribsr.onnx.OnnxModel`)
against the PyTorch network, on tiny models, the shared fixture checkpoint and the bundled model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import ribsr
from ribsr.model.attention import mirror_index, pad_to_multiple
from ribsr.onnx import export_onnx, is_onnx_path

pytest.importorskip("onnx", reason="onnx is not installed (pip install -e '.[dev]' or 'ribsr[onnx]')")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e '.[dev]' or 'ribsr[onnx]')")

from ribsr.onnx import OnnxModel  # noqa: E402  (after the skips: needs onnxruntime)

TOL = 1e-4  # max |onnxruntime - PyTorch| in float32 (measured: ~2e-6)
FP16_TOL = 5e-3  # max |float16 file - float32 PyTorch| (measured: ~1e-3 on the bundled model)

# Tiny networks: one thread is faster, and far faster on a busy machine.
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**overrides) -> ribsr.SST:
    """``light`` cut down to one block of windows 4 and 8 (random weights)."""
    kwargs = dict(n_blocks=1, window_sizes=[4, 8], num_heads=[3, 3], ranks=[4, 4])
    return ribsr.build_model("light", **{**kwargs, **overrides}).eval()


def max_diff(model: torch.nn.Module, onnx_model: OnnxModel, x: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x) - onnx_model(x)).abs().max().item()


@pytest.fixture(scope="module", params=[False, True], ids=["standard", "fused"])
def tiny_pair(request, tmp_path_factory) -> tuple[ribsr.SST, OnnxModel]:
    """A tiny model and its export, with standard ONNX attention or onnxruntime's fused MultiHeadAttention."""
    torch.manual_seed(0)
    model = tiny()
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "tiny.onnx", fused_attention=request.param)
    return model, OnnxModel(path)


# (B, 3, H, W): multiples of both windows; of neither; sides below the largest window (8) and below the
# padding (reflection continued periodically); a single pixel; a batch of 3.
SIZES = [(1, 3, 16, 24), (1, 3, 13, 21), (1, 3, 5, 3), (1, 3, 1, 1), (3, 3, 9, 12)]


@pytest.mark.parametrize("shape", SIZES, ids=lambda s: "x".join(map(str, s)))
def test_tiny_matches_pytorch(tiny_pair, shape) -> None:
    model, onnx_model = tiny_pair
    torch.manual_seed(1)
    x = torch.rand(shape)
    assert onnx_model(x).shape == (shape[0], 3, 2 * shape[2], 2 * shape[3])
    assert max_diff(model, onnx_model, x) <= TOL


def test_metadata_describes_the_model(tiny_pair) -> None:
    model, onnx_model = tiny_pair
    assert onnx_model.info.scale == 2 and onnx_model.info.multiple_of == 8  # lcm(4, 8)
    assert onnx_model.config == model.config
    assert onnx_model.metadata["ribsr_dtype"] == "float32"
    assert onnx_model.input_type == "float32"


def test_attention_operators(tiny_pair) -> None:
    import onnx

    onnx_model = tiny_pair[1]
    nodes = onnx.load(str(onnx_model.path)).graph.node
    fused = [n for n in nodes if n.op_type == "MultiHeadAttention"]
    if onnx_model.metadata["ribsr_attention"] == "standard":
        assert not fused and {n.domain for n in nodes} <= {"", "ai.onnx"}  # runs in any ONNX runtime
        assert onnx_model.metadata["ribsr_score_bytes_per_pixel"] == str(3 * 8 * 8 * 4)  # heads * N * 4
    else:
        assert len(fused) == 2 and {n.domain for n in fused} == {"com.microsoft"}  # one per layer
        assert onnx_model.metadata["ribsr_score_bytes_per_pixel"] == "0"


def test_positional_term_is_folded(tiny_pair) -> None:
    import onnx

    proto = onnx.load(str(tiny_pair[1].path))
    ops = {node.op_type for node in proto.graph.node}
    assert not ops & {"Sin", "Cos", "Relu"}, "the RIB MLP is computed at run time"
    # Stored as low-rank factors (heads, N, R), never as a dense (heads, N, N) bias.
    shapes = [tuple(t.dims) for t in proto.graph.initializer]
    assert (3, 64, 4) in shapes and (3, 16, 4) in shapes
    assert not [s for s in shapes if len(s) == 3 and s[1] == s[2] and s[1] in (16, 64)]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13])
@pytest.mark.parametrize("ws", [4, 8])
@pytest.mark.parametrize("shift", [0, 2])
def test_mirror_index_is_the_reference_padding(n, ws, shift) -> None:
    padded = -(-n // ws) * ws
    x = torch.arange(n, dtype=torch.float32).reshape(1, 1, n, 1).expand(1, 1, n, ws)
    expected = pad_to_multiple(x, ws)[0, 0, :, 0].long()  # source row of each padded row
    assert torch.equal(expected, mirror_index(n, padded, device=torch.device("cpu")))
    expected = torch.roll(expected, -shift)
    assert torch.equal(mirror_index(n, padded, shift), expected)


@pytest.mark.parametrize("fused", [False, True], ids=["standard", "fused"])
def test_shared_fixture_matches_pytorch_and_oracle(shared_dir: Path, tmp_path, fused) -> None:
    fixtures = shared_dir / "fixtures" / "official-sst"
    if not (fixtures / "cases.json").is_file():
        pytest.skip(f"no shared official fixture in {fixtures}")
    case = json.loads((fixtures / "cases.json").read_text())["shift_x4"]  # windows 8, shifted; x4
    model = ribsr.load_model(fixtures / "shift_x4.pth", config=case["network_g"])
    onnx_model = OnnxModel(export_onnx(model, tmp_path / "shift_x4.onnx", fused_attention=fused))
    assert onnx_model.info.scale == 4 and onnx_model.info.multiple_of == 8
    io = torch.load(fixtures / "shift_x4_io.pt", weights_only=True)  # (2, 3, 20, 28): not multiples of 8
    assert max_diff(model, onnx_model, io["input"]) <= TOL
    assert (onnx_model(io["input"]) - io["output"]).abs().max().item() <= TOL
    assert max_diff(model, onnx_model, torch.rand(1, 3, 6, 5)) <= TOL  # below one window
    assert max_diff(model, onnx_model, torch.rand(1, 3, 16, 8)) <= TOL  # whole windows


def test_bundled_model_matches_pytorch(tmp_path) -> None:
    model = ribsr.load_model("default")  # windows 8 and 16, x2
    onnx_model = OnnxModel(export_onnx(model, tmp_path / "default.onnx"))
    assert onnx_model.info.multiple_of == 16
    for shape in [(1, 3, 32, 48), (2, 3, 11, 19), (1, 3, 7, 40)]:
        assert max_diff(model, onnx_model, torch.rand(shape)) <= TOL, shape


@pytest.mark.parametrize(
    "overrides",
    [
        dict(attn_type="RPB", upsampler="nn+conv", scale=4),  # a dense bias: plain attention even when fused
        dict(attn_type="RoPE", upsampler="pixelshuffle", scale=3, gate_type="Linear"),
        dict(attn_type="FlashBias", gate_type="none"),
        dict(attn_type="CPE"),
    ],
    ids=lambda o: o["attn_type"],
)
def test_other_schemes_and_heads(tmp_path, overrides) -> None:
    model = tiny(window_sizes=[4, 4], **overrides)  # equal windows: the second layer is shifted
    for fused in (False, True):
        onnx_model = OnnxModel(export_onnx(model, tmp_path / f"m{fused}.onnx", fused_attention=fused))
        assert onnx_model.info.scale == model.config.scale
        assert max_diff(model, onnx_model, torch.rand(2, 3, 7, 10)) <= TOL, fused


def test_fp16_is_close(tmp_path) -> None:
    model = ribsr.load_model("default")
    onnx_model = OnnxModel(export_onnx(model, tmp_path / "half.onnx", fp16=True))
    assert onnx_model.input_type == "float16" and onnx_model.metadata["ribsr_dtype"] == "float16"
    x = torch.rand(2, 3, 21, 18)
    y = onnx_model(x)
    assert y.dtype == torch.float32
    assert max_diff(model, onnx_model, x) <= FP16_TOL


def test_upscaler_tiles_an_onnx_model_as_the_checkpoint(tiny_pair) -> None:
    model, onnx_model = tiny_pair
    x = torch.rand(1, 3, 37, 29)
    for tile in (0, 16):
        ref = ribsr.Upscaler(model, tile=tile, batch_size=2, device="cpu").upscale_tensor(x)
        out = ribsr.Upscaler(onnx_model, tile=tile, batch_size=2, device="cpu").upscale_tensor(x)
        assert (ref - out).abs().max().item() <= TOL, tile


def test_export_rejects_bad_arguments(tmp_path) -> None:
    model = tiny()
    with pytest.raises(ValueError, match=r"opset must be an integer from 14 to \d+ .*, got 9"):
        export_onnx(model, tmp_path / "m.onnx", opset=9)
    with pytest.raises(ValueError, match=r"opset must be an integer from 14 to \d+ .*, got 25"):
        export_onnx(model, tmp_path / "m.onnx", opset=25)
    with pytest.raises(ValueError, match=r"writes \.onnx files, got .*m\.pt"):
        export_onnx(model, tmp_path / "m.pt")
    with pytest.raises(TypeError, match="exports an SST or an ESCRIB, got Linear"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "m.onnx")  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir())


def test_onnx_model_errors_name_the_file(tmp_path) -> None:
    import onnx
    from onnx import TensorProto, helper

    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        OnnxModel(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.onnx"):
        OnnxModel(tmp_path / "junk.onnx")
    # A plain x2 nearest upsampler from elsewhere: no ribsr metadata.
    graph = helper.make_graph(
        [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest")], "up",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])],
    )
    path = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(ValueError, match=r"plain\.onnx has no 'ribsr_scale' in its metadata"):
        OnnxModel(path)
    plain = OnnxModel(path, scale=2, align=1)
    x = torch.rand(1, 3, 5, 4)
    assert torch.equal(plain(x), torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest"))


def _plain_x2(path: Path, **metadata: str) -> Path:
    """A plain x2 nearest upsampler (no ribsr export) with ``metadata`` in its metadata_props."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest")], "up",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("metadata,message", [
    ({"ribsr_scale": "1000000", "ribsr_multiple_of": "8"}, r"ribsr_scale='1000000' is not an integer from "
                                                            r"1 to 16; the file is damaged"),
    ({"ribsr_scale": "0", "ribsr_multiple_of": "8"}, "ribsr_scale='0' is not an integer from 1 to 16"),
    ({"ribsr_scale": "2", "ribsr_multiple_of": "-8"}, "ribsr_multiple_of='-8' is not an integer from 1 to 4096"),
    ({"ribsr_scale": "2", "ribsr_multiple_of": "9" * 5000},
     r"ribsr_multiple_of='9{40}\.\.\. \(5000 characters\)' is not an integer"),
    ({"ribsr_scale": "2", "ribsr_multiple_of": "x"}, "ribsr_multiple_of='x' is not an integer from 1 to 4096"),
    ({"ribsr_scale": "2", "ribsr_multiple_of": "8", "ribsr_score_bytes_per_pixel": "-5"},
     "ribsr_score_bytes_per_pixel='-5' is not an integer from 0 to 1073741824"),
])
def test_onnx_metadata_out_of_bounds_is_refused(tmp_path, metadata, message) -> None:
    """A file's scale and alignment size every tile and buffer: a scale of a million was taken as it was."""
    path = _plain_x2(tmp_path / "bad.onnx", **metadata)
    with pytest.raises(ValueError, match=r"bad\.onnx: metadata " + message):
        OnnxModel(path)


def test_onnx_overrides_are_bounded_and_must_agree_with_the_configuration(tmp_path, tiny_pair) -> None:
    import onnx

    path = _plain_x2(tmp_path / "plain.onnx")
    with pytest.raises(ValueError, match="scale must be an integer from 1 to 16, got 64"):
        OnnxModel(path, scale=64, align=1)
    with pytest.raises(ValueError, match="align must be an integer from 1 to 4096, got 0"):
        OnnxModel(path, scale=2, align=0)
    assert OnnxModel(path, scale=np.int64(2), align=1).info.scale == 2
    _, exported = tiny_pair
    proto = onnx.load(str(exported.path))
    for prop in proto.metadata_props:
        if prop.key == "ribsr_scale":
            prop.value = "4"
    onnx.save(proto, str(tmp_path / "lying.onnx"))
    with pytest.raises(ValueError, match=r"lying\.onnx: metadata ribsr_scale=4 disagrees with the network "
                                         r"configuration in its metadata \(ribsr_config\), which gives 2"):
        OnnxModel(tmp_path / "lying.onnx")
    with pytest.raises(ValueError, match=r"tiny\.onnx: align=4 disagrees with .*, which gives 8"):
        OnnxModel(exported.path, align=4)


def test_a_folder_or_fifo_named_onnx_says_what_it_is(tmp_path) -> None:
    """Both were "no such ONNX file"."""
    import os

    (tmp_path / "dir.onnx").mkdir()
    os.mkfifo(tmp_path / "pipe.onnx")
    with pytest.raises(ValueError, match=r"dir\.onnx: is a folder, not an ONNX file"):
        OnnxModel(tmp_path / "dir.onnx")
    with pytest.raises(ValueError, match=r"pipe\.onnx: is a FIFO \(named pipe\), not an ONNX file"):
        OnnxModel(tmp_path / "pipe.onnx")


def test_is_onnx_path() -> None:
    assert is_onnx_path("a/model.onnx") and is_onnx_path(Path("M.ONNX"))
    assert not is_onnx_path(None) and not is_onnx_path("model.safetensors") and not is_onnx_path("default")


def test_core_does_not_import_onnx() -> None:
    import subprocess
    import sys

    code = ("import sys, ribsr, ribsr.cli, ribsr.onnx; ribsr.cli.build_parser(); "
            "print(sorted(m for m in ('onnx', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
