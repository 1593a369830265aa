"""The positional schemes (RPB, FlashBias, RoPE, NoPE, CPE): paths agree, they train, they keep the paper's names."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from ribsr.build import build_sst
from ribsr.checkpoint import load_model, save_model
from ribsr.config import ATTN_TYPES, ConfigError, SSTConfig
from ribsr.model import CacheBudget, FlashBias, NoPE, RoPE
from ribsr.model.attention import attend_bias, attend_concat, attend_reference
from ribsr.model.positional import RPB, mixed_rope_frequencies, relative_position_index

PATHS = {"reference": attend_reference, "bias": attend_bias, "concat": attend_concat}


def _tiny(attn_type: str, **overrides) -> SSTConfig:
    kw = dict(dim=24, window_sizes=(4, 8), num_heads=(3, 3), ranks=(4, 6), n_blocks=1, exp_ratio=1.5,
              rib_hidden_dim=8, rib_n_freqs=3, attn_type=attn_type)
    kw.update(overrides)
    return SSTConfig(**kw)


def _qkv(ws: int, windows: int = 2, heads: int = 3, d: int = 8):
    return tuple(torch.randn(windows, heads, ws * ws, d) for _ in range(3))


@pytest.mark.parametrize("ws", [1, 3, 4])
def test_rpb_index_equals_the_direct_formula(ws):
    index = relative_position_index(ws)
    assert index.shape == (ws * ws, ws * ws)
    for qh in range(ws):
        for qw in range(ws):
            for kh in range(ws):
                for kw in range(ws):
                    expected = (kh - qh + ws - 1) * (2 * ws - 1) + (kw - qw + ws - 1)
                    assert index[qh * ws + qw, kh * ws + kw] == expected


def test_rpb_bias_is_the_gathered_table_and_paths_agree():
    ws = 4
    rpb = RPB(3, ws).eval()
    with torch.no_grad():
        rpb.relative_position_bias.normal_(0, 1.0)
        bias = rpb.bias(ws, torch.device("cpu"))
    table = rpb.relative_position_bias.detach().view(3, 2 * ws - 1, 2 * ws - 1)
    assert bias[1, 0 * ws + 1, 2 * ws + 3] == table[1, 2 - 0 + ws - 1, 3 - 1 + ws - 1]  # (0,1) -> (2,3)
    q, k, v = _qkv(ws)
    with torch.no_grad():
        naive, mask = attend_reference(q, k, v, rpb, ws), attend_bias(q, k, v, rpb, ws)
    expected = torch.softmax(q.double() @ k.double().transpose(-1, -2) / math.sqrt(8) + bias.double(), -1) @ v.double()
    torch.testing.assert_close(naive.double(), expected, atol=1e-5, rtol=0)
    assert (naive - mask).abs().max() <= 1e-5


def test_flashbias_paths_agree():
    ws = 8
    fb = FlashBias(3, 6, ws).eval()
    with torch.no_grad():
        for p in fb.parameters():
            p.normal_(0, 0.7)
    q, k, v = _qkv(ws)
    with torch.no_grad():
        outs = {name: fn(q, k, v, fb, ws) for name, fn in PATHS.items()}
        q_f, k_f = fb.factors(ws, q.device)
    expected = fb.flashbias_q @ fb.flashbias_k.transpose(-1, -2) / math.sqrt(6)
    torch.testing.assert_close(q_f @ k_f.transpose(-1, -2), expected)
    for name in ("bias", "concat"):
        assert (outs[name] - outs["reference"]).abs().max() <= 1e-5, name


def test_rope_is_a_pure_rotation_with_relative_dot_products():
    ws, heads, d = 4, 2, 8
    rope = RoPE(heads, d).eval()
    with torch.no_grad():
        rope.rope_freqs.normal_(0, 1.0)
    # the same query and key vectors at every position: after rotation q_n . k_m depends on n - m only
    q = torch.randn(1, heads, 1, d).expand(1, heads, ws * ws, d)
    k = torch.randn(1, heads, 1, d).expand(1, heads, ws * ws, d)
    with torch.no_grad():
        qr, kr = rope.rotate(q, k, ws)
    torch.testing.assert_close(qr.norm(dim=-1), q.norm(dim=-1))
    torch.testing.assert_close(kr.norm(dim=-1), k.norm(dim=-1))
    dots = (qr @ kr.transpose(-1, -2))[0]  # (heads, N, N)
    rows, cols = torch.arange(ws * ws) // ws, torch.arange(ws * ws) % ws
    seen: dict[tuple, torch.Tensor] = {}
    for n in range(ws * ws):
        for m in range(ws * ws):
            offset = (int(rows[m] - rows[n]), int(cols[m] - cols[n]))
            if offset in seen:
                torch.testing.assert_close(dots[:, n, m], seen[offset], atol=1e-5, rtol=0)
            seen[offset] = dots[:, n, m]
    assert not torch.allclose(dots[:, 0, 1], dots[:, 0, 2])  # it does depend on the offset
    with torch.no_grad():
        q, k, v = _qkv(ws, heads=heads, d=d)
        outs = {name: fn(q, k, v, rope, ws) for name, fn in PATHS.items()}
    for name in ("bias", "concat"):
        assert (outs[name] - outs["reference"]).abs().max() <= 1e-5, name


def test_rope_initial_frequencies_follow_ropevit():
    f = mixed_rope_frequencies(heads=3, head_dim=16, theta=10.0)
    assert f.shape == (2, 3, 8)
    mag = 1.0 / 10.0 ** (torch.arange(0, 16, 4).float() / 16)
    radius = (f[0] ** 2 + f[1] ** 2).sqrt()  # fx = mag cos(a), fy = mag sin(a)
    torch.testing.assert_close(radius, torch.cat([mag, mag]).expand(3, 8))
    # the second half is the first turned by 90 degrees
    torch.testing.assert_close(f[0, :, 4:], -f[1, :, :4])
    assert mixed_rope_frequencies(heads=2, head_dim=30).shape == (2, 2, 15)  # padded to 32 for the magnitudes


def test_rope_rejects_odd_head_dims():
    with pytest.raises(ConfigError, match="RoPE needs even head dimensions.*9"):
        _tiny("RoPE", dim=27)
    with pytest.raises(ValueError, match="even head dimension, got 7"):
        RoPE(2, 7)


def test_window_bound_schemes_reject_other_windows():
    with pytest.raises(ValueError, match="8x8 windows, got window size 4"):
        FlashBias(2, 4, 8).factors(4, torch.device("cpu"))
    with pytest.raises(ValueError, match="4x4 windows, got window size 8"):
        RPB(2, 4).bias(8, torch.device("cpu"))


PAPER_NAMES = {
    "RIB": {"body.0.0.attn.to_q": (3, 8, 4), "body.0.1.attn.to_hidden": (2 + 4 * 3, 8)},
    "RPB": {"body.0.0.attn.relative_position_bias": (3, 7 * 7), "body.0.1.attn.relative_position_bias": (3, 15 * 15)},
    "FlashBias": {"body.0.0.attn.flashbias_q": (3, 16, 4), "body.0.1.attn.flashbias_k": (3, 64, 6)},
    "RoPE": {"body.0.0.attn.rope_freqs": (2, 3, 4)},
    "NoPE": {},
    "CPE": {"body.0.0.cpe.weight": (24, 1, 3, 3), "body.0.1.cpe.bias": (24,)},
}


@pytest.mark.parametrize("attn_type", ATTN_TYPES)
def test_state_dict_names_are_the_papers(attn_type):
    state = build_sst(_tiny(attn_type)).state_dict()
    for key, shape in PAPER_NAMES[attn_type].items():
        assert tuple(state[key].shape) == shape, key
    names = ("to_q", "relative_position_bias", "flashbias_q", "rope_freqs", "cpe.weight")
    mine = {n for n in names if any(k.endswith("." + n) for k in PAPER_NAMES[attn_type])}
    assert {n for n in names if any(k.endswith("." + n) for k in state)} == mine  # no other scheme's names
    assert not any(".pos." in k for k in state)


@pytest.mark.parametrize("attn_type", ATTN_TYPES)
def test_each_scheme_trains_a_step(attn_type):
    model = build_sst(_tiny(attn_type)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y = torch.rand(2, 3, 12, 12), torch.rand(2, 3, 24, 24)
    torch.nn.functional.l1_loss(model(x), y).backward()
    layer = model.body[0][0]
    own = list(layer.attn.pos.parameters()) + (list(layer.cpe.parameters()) if layer.cpe is not None else [])
    assert (len(own) > 0) == (attn_type != "NoPE")
    before = [p.detach().clone() for p in own]
    for p in own:
        assert p.grad is not None and p.grad.abs().sum() > 0
    opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, own, strict=True))


@pytest.mark.parametrize("attn_type", ATTN_TYPES)
def test_config_model_safetensors_round_trip(attn_type, tmp_path):
    model = build_sst(_tiny(attn_type)).eval()
    path = save_model(model, tmp_path / f"{attn_type}.safetensors")
    loaded = load_model(path)
    assert loaded.config == model.config and loaded.config.attn_type == attn_type
    x = torch.rand(1, 3, 10, 13)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)


@pytest.mark.parametrize("alias,name", [("naive", "RPB"), ("SDPA", "RPB"), ("flashbias", "FlashBias"),
                                        ("RoPEViT", "RoPE"), ("nope", "NoPE"), ("cpe", "CPE")])
def test_paper_names_are_accepted(alias, name):
    assert _tiny(alias).attn_type == name


@pytest.mark.parametrize("attn_type", ["RPB", "FlashBias", "RoPE", "CPE"])
def test_paths_agree_on_a_whole_network(attn_type):
    torch.manual_seed(2)
    ref = build_sst(_tiny(attn_type), attention="reference").eval()
    with torch.no_grad():
        for p in ref.parameters():  # make the positional terms matter
            p.add_(torch.randn_like(p) * 0.05)
    x = torch.rand(1, 3, 13, 18)
    with torch.no_grad():
        expected = ref(x)
        for attention in ("bias", "concat", "auto"):
            m = build_sst(_tiny(attn_type), attention=attention).eval()
            m.load_state_dict(ref.state_dict())
            assert (m(x) - expected).abs().max() <= 1e-5, attention


def test_model_wide_bias_cache_budget():
    model = build_sst(_tiny("RPB"), bias_cache_bytes=3 * 16 * 16 * 4).eval()  # room for the 4x4-window bias only
    schemes = [model.body[0][j].attn.pos for j in range(2)]  # window sizes 4 and 8
    cpu = torch.device("cpu")

    def kept(j: int, ws: int) -> bool:
        return schemes[j].bias(ws, cpu) is schemes[j].bias(ws, cpu)

    with torch.no_grad():
        model(torch.rand(1, 3, 8, 8))
        budget = schemes[0].bias_budget
        assert budget.used == 3 * 16 * 16 * 4
        assert kept(0, 4) and not kept(1, 8)  # the second layer's bias does not fit the shared budget
        schemes[0].relative_position_bias.add_(1.0)  # stale: rebuilt, and charged once
        model(torch.rand(1, 3, 8, 8))
        assert budget.used == 3 * 16 * 16 * 4
        model.set_bias_cache(0)
        assert budget.used == 0 and not kept(0, 4)
    with pytest.raises(ValueError, match="-1"):
        CacheBudget(-1)


@pytest.mark.parametrize("attn_type", ["RIB", "RPB"])
def test_model_built_under_inference_mode_runs_and_caches(attn_type):
    """Parameters made under torch.inference_mode (as tools that load models inside it make them) keep no
    version counter: the cache must still work, and still see an in-place change of the weights."""
    torch.manual_seed(3)
    ref = build_sst(_tiny(attn_type), attention="bias").eval()
    x = torch.rand(1, 3, 9, 11)
    with torch.inference_mode():
        model = build_sst(_tiny(attn_type), attention="bias").eval()
        model.load_state_dict(ref.state_dict())
        pos = model.body[0][0].attn.pos
        assert next(pos.parameters()).is_inference()
        out = model(x)
        assert pos.bias(4, torch.device("cpu")) is pos.bias(4, torch.device("cpu"))  # cached
        for p in pos.parameters():
            p.add_(0.5)
        changed = model(x)
    with torch.no_grad():
        assert (out - ref(x)).abs().max() <= 1e-6
        for p in ref.body[0][0].attn.pos.parameters():
            p.add_(0.5)
        assert (changed - ref(x)).abs().max() <= 1e-6  # not the stale bias


def test_nope_has_no_parameters_and_no_term():
    pos = NoPE()
    assert not list(pos.parameters()) and pos.bias(4, torch.device("cpu")) is None


def test_loading_a_checkpoint_does_not_import_torch_dynamo():
    # Shape checks build the network on the meta device; normal_ there imports torch._dynamo (~0.9 s per process).
    code = "import sys, ribsr; ribsr.load_model('default'); print('torch._dynamo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
