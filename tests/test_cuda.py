"""CUDA checks (skipped without a GPU; run by scripts/gpu_check.py): precision per dtype, flash dispatch, schemes.

Tolerances (max / mean abs difference from the paper's code's float32 output of the fixture, whose
output std is about 0.5) were set at about 4x what the same networks give on the CPU in that dtype
(bfloat16: 0.016 / 0.0028, float16: 0.0022 / 0.00036); float32 runs with TF32 off.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import REPO
from ribsr.build import build_sst
from ribsr.checkpoint import load_model
from ribsr.config import ATTN_TYPES, SSTConfig
from ribsr.model.attention import attend_bias, attend_concat, attend_reference
from ribsr.model.positional import RIB

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

TOLERANCES = {  # dtype: (max abs, mean abs)
    torch.float32: (1e-4, 1e-5),
    torch.bfloat16: (6e-2, 1e-2),
    torch.float16: (1e-2, 2e-3),
}


def _fixture_dirs() -> list[Path]:
    shared = Path(os.environ.get("RIBSR_SHARED", REPO.parent / "shared"))
    dirs = [REPO / "tests" / "fixtures" / "official", shared / "fixtures" / "official-sst"]
    return [d for d in dirs if (d / "cases.json").is_file()]


@pytest.fixture
def no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
@pytest.mark.parametrize("attention", ["auto", "concat", "bias"])
def test_fixtures_in_each_dtype(dtype, attention, no_tf32):
    dirs = _fixture_dirs()
    if not dirs:
        pytest.skip("no fixture folder (tests/fixtures/official or $RIBSR_SHARED/fixtures/official-sst)")
    max_tol, mean_tol = TOLERANCES[dtype]
    for root in dirs:
        for name, case in json.loads((root / "cases.json").read_text()).items():
            if "load_config" in case or "checkpoint" in case and case["checkpoint"] != f"{name}.pth":
                continue  # scale-change cases are covered on the CPU
            model = load_model(root / f"{name}.pth", config=case["network_g"], attention=attention,
                               device="cuda", dtype=dtype)
            io = torch.load(root / f"{name}_io.pt", weights_only=True)
            with torch.no_grad():
                out = model(io["input"].to("cuda", dtype)).float().cpu()
            diff = (out - io["output"]).abs()
            assert diff.max() <= max_tol and diff.mean() <= mean_tol, (
                f"{root.name}/{name} {dtype} {attention}: max {diff.max():.3g}, mean {diff.mean():.3g}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_rib_runs_on_the_flash_kernel(dtype):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.profiler import ProfilerActivity, profile

    model = build_sst(SSTConfig(dim=64, window_sizes=(16, 32), num_heads=(2, 2), ranks=(16, 32), n_blocks=1))
    model = model.to("cuda", dtype).eval()
    x = torch.rand(1, 3, 64, 64, device="cuda", dtype=dtype)
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        model(x)
    names = {e.key for e in prof.key_averages() if "scaled_dot_product" in e.key}
    # FlashAttention (or cuDNN's flash-style kernel where PyTorch prefers it); never a bias-taking kernel
    fused = {"aten::_scaled_dot_product_flash_attention", "aten::_scaled_dot_product_cudnn_attention"}
    assert names & fused, sorted(names)
    assert not any("efficient_attention" in n or "_attention_math" in n for n in names), sorted(names)
    with torch.no_grad(), sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # raises if flash cannot take it
        model(x)


def test_paths_agree_in_float32_on_cuda(no_tf32):
    rib = RIB(3, 24).cuda().eval()
    with torch.no_grad():
        for p in rib.parameters():
            p.normal_(0, 0.5)
        q, k, v = (torch.randn(4, 3, 32 * 32, 16, device="cuda") for _ in range(3))
        ref = attend_reference(q, k, v, rib, 32)
        for fn in (attend_bias, attend_concat):
            assert (fn(q, k, v, rib, 32) - ref).abs().max() <= 1e-5, fn.__name__


@pytest.mark.parametrize("attn_type", ATTN_TYPES)
def test_every_scheme_trains_in_bfloat16(attn_type):
    config = SSTConfig(dim=32, window_sizes=(8, 16), num_heads=(2, 2), ranks=(8, 8), n_blocks=1, attn_type=attn_type)
    model = build_sst(config).to("cuda", torch.bfloat16).train()
    x = torch.rand(2, 3, 32, 32, device="cuda", dtype=torch.bfloat16)
    loss = model(x).float().abs().mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
