"""ESC-RIB through ONNX: export_onnx of a tiny ESC-RIB run by onnxruntime against PyTorch, at several sizes and
batches (the per-image dynamic kernels included), and the metadata the inference code reads."""

from __future__ import annotations

import json

import pytest
import torch

import ribsr
from ribsr.onnx import ExportPartialLargeKernelConv, export_onnx, exportable

pytest.importorskip("onnx", reason="onnx is not installed (pip install -e '.[dev]' or 'ribsr[onnx]')")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e '.[dev]' or 'ribsr[onnx]')")

from ribsr.onnx import META_CONFIG, META_MULTIPLE_OF, OnnxModel  # noqa: E402  (after the skips)

TOL = 1e-4  # max |onnxruntime - PyTorch| in float32

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=[False, True], ids=["standard", "fused"])
def pair(request, tmp_path_factory):
    torch.manual_seed(0)
    model = ribsr.build_model("escrib-tiny", scale=3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # the dynamic-kernel predictor starts at zero
    model.eval()
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "escrib.onnx", fused_attention=request.param)
    return model, OnnxModel(path)


@pytest.mark.parametrize("shape", [(1, 3, 16, 24), (1, 3, 13, 21), (1, 3, 5, 3), (3, 3, 9, 12)],
                         ids=lambda s: "x".join(map(str, s)))
def test_matches_pytorch(pair, shape):
    model, onnx_model = pair
    x = torch.rand(shape)
    with torch.no_grad():
        expected = model(x)
    got = onnx_model(x)
    assert got.shape == (shape[0], 3, 3 * shape[2], 3 * shape[3])
    assert (got - expected).abs().max().item() <= TOL


def test_metadata_names_the_architecture_and_the_window(pair):
    model, onnx_model = pair
    assert onnx_model.metadata[META_MULTIPLE_OF] == "8" and onnx_model.info.multiple_of == 8
    assert json.loads(onnx_model.metadata[META_CONFIG])["architecture"] == "ESCRIB"
    assert onnx_model.config == model.config and onnx_model.info.scale == 3


def test_the_export_twin_is_the_same_function():
    model = ribsr.build_model("escrib-tiny").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    twin = exportable(model)
    assert twin.folded and not model.folded  # the original is left as it was
    assert sum(isinstance(m, ExportPartialLargeKernelConv) for m in twin.modules()) == 4  # 2 blocks x 2 units
    x = torch.rand(2, 3, 11, 7)
    with torch.no_grad():
        assert (twin(x) - model(x)).abs().max() <= 1e-5
