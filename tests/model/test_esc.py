"""The ESC-RIB network (ribsr.model.esc) as ribsr.build makes it: size, shapes, released parameter names, the
dihedral kernel average, per-image dynamic kernels, and agreement of the attention paths."""

from __future__ import annotations

import pytest
import torch

from ribsr.build import BUILDERS, build_escrib, build_model, build_network
from ribsr.config import ESCRIBConfig, preset
from ribsr.model.esc import ESCRIB, dihedral_average
from ribsr.modelinfo import model_info
from ribsr.transforms import dihedral

pytestmark = pytest.mark.usefixtures("one_thread")


def _perturbed(model: ESCRIB, std: float = 0.05) -> ESCRIB:
    """Every weight moved off its initial value (the dynamic-kernel predictor starts at zero, which would hide it)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * std)
    return model.eval()


def _paper_param_count(scale: int) -> int:
    """Parameters of the paper's ESCRIB(dim=64, pdim=16, kernel_size=13, n_blocks=5, conv_blocks=5, window_size=64,
    num_heads=4, exp_ratio=1.25, attn_type='RIB', rank=16, rib_hidden_dim=32, rib_n_freqs=10, gate_type='DWC'),
    counted from its module definition (sst/archs/esc_rib_arch.py, arch_utils.py): conv weights + biases."""
    dim, pdim, k, heads, rank, hidden_rib, freqs = 64, 16, 13, 4, 16, 32, 10

    def conv(cin, cout, ks, groups=1):
        return cout * (cin // groups) * ks * ks + cout

    def convffn(hidden):  # proj 1x1, depthwise 3x3, aggr 1x1
        return conv(dim, hidden, 1) + conv(hidden, hidden, 3, hidden) + conv(hidden, dim, 1)

    layer_norm = 2 * dim
    attention = (conv(dim, 3 * dim, 1) + conv(dim, dim, 1)  # to_qkv, to_out
                 + (2 + 4 * freqs) * hidden_rib + hidden_rib + 2 * heads * hidden_rib * rank  # RIB MLP
                 + conv(dim, dim, 3, dim) + conv(dim, dim, 1))  # DWC gate
    pconv = conv(pdim, pdim // 2, 1) + conv(pdim // 2, pdim * 9, 1) + conv(dim, dim, 1)  # dwc_proj, aggr
    block = (layer_norm + convffn(4 * dim) + layer_norm + attention  # ln_proj, proj, ln_attn, attn (no lns: use_ln off)
             + 5 * (pconv + convffn(int(dim * 1.25))) + layer_norm + conv(dim, dim, 3))  # units, ln_out, conv_out
    return (pdim * pdim * k * k + conv(3, dim, 3) + 5 * block + layer_norm + conv(dim, dim, 3)
            + conv(dim, 3 * scale * scale, 3))  # plk_filter, proj, blocks, last, upsampler (pixelshuffle_direct)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_published_preset_has_the_papers_parameter_count(scale):
    with torch.device("meta"):
        model = build_model("escrib", scale=scale)
    n = sum(p.numel() for p in model.parameters())
    assert n == _paper_param_count(scale) == {2: 1_007_796, 3: 1_016_451, 4: 1_028_568}[scale]


def test_the_builder_is_chosen_by_the_configs_architecture():
    config = preset("escrib-tiny")
    assert BUILDERS[config.architecture] is build_escrib
    assert isinstance(build_network(config), ESCRIB) and isinstance(build_model("escrib-tiny"), ESCRIB)
    assert type(build_network(preset("light", n_blocks=1))).__name__ == "SST"


def test_parameter_names_are_the_released_checkpoints():
    keys = set(build_model("escrib-tiny").state_dict())
    for key in ("plk_filter", "proj.weight", "blocks.1.ln_proj.weight", "blocks.0.proj.aggr.weight",
                "blocks.0.attn.to_qkv.weight", "blocks.0.attn.to_hidden", "blocks.0.attn.to_q",
                "blocks.0.attn.gate.1.bias",
                "blocks.0.pconvs.1.plk.dwc_proj.1.weight", "blocks.0.pconvs.1.plk.dwc_proj.3.bias",
                "blocks.0.pconvs.0.aggr.weight", "blocks.0.convffns.1.aggr.bias", "blocks.0.ln_out.bias",
                "blocks.0.conv_out.weight", "last.0.weight", "last.1.weight", "upsampler.up_conv.weight"):
        assert key in keys, key
    assert not any(".agg." in k or ".pos." in k or ".lns." in k for k in keys)  # use_ln off: the lns hold nothing
    with_ln = build_network(preset("escrib-tiny", use_ln=True)).state_dict()
    assert "blocks.0.lns.1.weight" in with_ln


def test_state_dict_loads_back_under_its_own_names():
    model = _perturbed(build_model("escrib-tiny"))
    twin = build_model("escrib-tiny")
    twin.load_state_dict(model.state_dict(), strict=True)
    x = torch.rand(1, 3, 12, 10)
    with torch.no_grad():
        assert torch.equal(model(x), twin.eval()(x))


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("size", [(1, 1), (5, 7), (8, 8), (19, 11)])
def test_output_shape_for_any_size_and_scale(size, scale):
    model = build_model("escrib-tiny", scale=scale).eval()
    with torch.no_grad():
        y = model(torch.rand(1, 3, *size))
    assert y.shape == (1, 3, size[0] * scale, size[1] * scale) and torch.isfinite(y).all()


def test_each_image_of_a_batch_gets_its_own_dynamic_kernel():
    model = _perturbed(build_model("escrib-tiny"))
    x = torch.rand(3, 3, 14, 9)
    with torch.no_grad():
        batch = model(x)
        alone = torch.cat([model(x[i:i + 1]) for i in range(3)])
    assert (batch - alone).abs().max() <= 1e-5


def test_dihedral_average_is_symmetric_and_a_projection():
    k = torch.randn(4, 3, 5, 5)
    avg = dihedral_average(k)
    for i in range(8):
        assert torch.allclose(dihedral(avg, i), avg, atol=1e-6)
    assert torch.allclose(dihedral_average(avg), avg, atol=1e-6)
    assert not torch.allclose(avg, k)
    assert torch.allclose(avg, sum(dihedral(k, i) for i in range(8)) / 8, atol=1e-6)  # the whole group, once each


def test_folding_the_kernel_keeps_the_output():
    model = _perturbed(build_model("escrib-tiny"))
    x = torch.rand(1, 3, 16, 13)
    with torch.no_grad():
        before = model(x)
        model.fold_kernel()
        assert model.folded and torch.allclose(model.plk_filter, dihedral_average(model.plk_filter), atol=1e-6)
        after = model(x)
    assert (after - before).abs().max() <= 1e-5


def test_the_kernel_is_averaged_in_the_forward_pass_and_trains_symmetric():
    model = build_model("escrib-tiny").train()
    model(torch.rand(1, 3, 9, 9)).mean().backward()
    g = model.plk_filter.grad  # the gradient of a symmetrised use is itself symmetric
    assert g is not None and g.abs().max() > 0
    assert torch.allclose(dihedral(g, 5), g, atol=1e-7)


@pytest.mark.parametrize("attention", ["bias", "concat", "auto", "naive"])
def test_attention_paths_agree_with_the_reference(attention):
    """The fused paths against the plain float32 path, on weights large enough for the positional term to matter."""
    ref = _perturbed(build_model("escrib-tiny", attention="reference"), std=0.2)
    other = build_model("escrib-tiny", attention=attention).eval()
    other.load_state_dict(ref.state_dict())
    x = torch.rand(2, 3, 17, 12)
    with torch.no_grad():
        diff = (ref(x) - other(x)).abs().max().item()
    assert diff <= 1e-4, diff


def test_model_info_aligns_tiles_to_the_window():
    info = model_info(build_model("escrib-tiny", scale=3))
    assert info.scale == 3 and info.multiple_of == 8 and info.width == 16
    assert info.bias_bytes == 2 * 8**4 * 4 and info.set_bias_cache is not None


def test_bias_cache_is_bounded_by_the_budget():
    model = _perturbed(build_model("escrib-tiny", attention="bias"))

    def cached_biases() -> int:
        return sum(key[0] == "bias" for m in model.modules() for key in getattr(m, "_cache", {}))

    model.set_bias_cache(0)
    with torch.no_grad():
        model(torch.rand(1, 3, 8, 8))
    assert cached_biases() == 0
    model.set_bias_cache(2**20)
    with torch.no_grad():
        model(torch.rand(1, 3, 8, 8))
    assert cached_biases() == 2  # one per block


def test_config_is_kept_and_other_attention_schemes_build():
    config = ESCRIBConfig.from_dict({**preset("escrib-tiny").to_dict(), "attn_type": "RPB"})
    model = build_network(config).eval()
    assert model.config == config and "blocks.0.attn.relative_position_bias" in model.state_dict()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 9, 7)).shape == (1, 3, 18, 14)
